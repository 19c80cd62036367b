"""What ``evaluate`` scores: samples generated from a model (with their protocol), read from a file or folder, or
given as a tensor."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import find_run_config
from ..errors import UserError
from ..seeds import format_seeds

DEFAULT_N = 1000  # samples generated when neither n nor seeds say


@dataclass
class Samples:
    x: Tensor
    kind: str  # 'image' | 'points'
    protocol: dict
    training: dict | None = None  # the run's {'data', 'data_split'} when its config.json records them
    from_model: bool = False
    classes: Tensor | None = None  # (N,) the class each sample was generated for


def run_training(p: Path, *, via_teacher: bool = True) -> dict | None:
    """{'data', 'data_split'} of the training config.json in or above a run / checkpoint directory or model file (a
    config without data_split predates it: those runs trained on all of the data). A DSNO student's run has none of
    its own: its teacher's (through the trajectories' manifest) stands for it, since the student learned its images."""
    found = find_run_config(p)
    if found is None:
        return None
    config = found[1]
    try:
        if "data" not in config and "traj_dir" in config and via_teacher:
            manifest = json.loads((Path(config["traj_dir"]) / "manifest.json").read_text())
            return run_training(Path(manifest["teacher"]["path"]), via_teacher=False)
        return {"data": str(config["data"]), "data_split": str(config.get("data_split", "all"))}
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        return None


def _read_samples_file(p: Path) -> tuple[Tensor, str, list[int] | None]:
    """Samples from an .npz/.npy, image folder or .zip as float32 ([−1, 1] images or points), plus stored seeds."""
    from ..data import load_dataset
    from ..data.images import load_npz

    seeds = None
    if p.suffix.lower() == ".npz" and p.is_file():
        try:
            with np.load(p, allow_pickle=False) as z:
                files = list(z.files)
                arr = z["samples"] if "samples" in files else None
                seeds = [int(s) for s in z["seeds"]] if "seeds" in files else None
        except Exception as err:
            raise UserError(f"{p}: cannot read as .npz ({type(err).__name__}: {err})") from None
        if arr is not None and arr.ndim == 2:
            if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
                raise UserError(f"{p}: point samples must be finite floats, got {arr.dtype}")
            return torch.from_numpy(arr.astype(np.float32)), "points", seeds
        if arr is not None:
            u8 = np.require(load_npz(p, "samples"), requirements="W")  # a copy only if the file came memory-mapped
            return torch.from_numpy(u8).float().div_(127.5).sub_(1.0), "image", seeds
    ds = load_dataset(str(p))
    return ds.x, ds.kind, seeds


def _resolve_seeds(seeds: str | Sequence[int] | None, n: int | None) -> list[int]:
    from ..seeds import parse_seeds

    if seeds is None:
        return list(range(n if n is not None else DEFAULT_N))
    out = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if n is not None:
        if n > len(out):
            raise UserError(f"--n {n} but --seeds names only {len(out)} seeds")
        out = out[:n]
    return out


def load_source(obj: Any, n: int | None, seeds: str | Sequence[int] | None, sampler: str | None, nfe: int | None,
                 ema: bool, batch: int, device: torch.device, gen_options: dict, progress: bool, fast: dict,
                 guidance: dict, schedule: str | None = None, gaussian: dict | None = None) -> Samples:
    """The samples to evaluate; a model is sampled with ``guidance`` = {'class_labels': ..., 'guidance': ...,
    'guidance_interval': ...} and
    ``gaussian`` = {'teleport': sigma_T or None, 'afs': bool, 'data_stats': DATA|FILE|GaussianDataStats|None}."""
    from ..checkpoint import sha256
    from ..samplers.tuning import schedule_options
    from ..sampling import resolve_sampler

    if isinstance(obj, Tensor):
        x = obj.detach().float().cpu()
        kind = "image" if x.ndim == 4 else "points"
        protocol = {"source": "in-memory samples", "sampler": None, "nfe": None, "weights": None,
                    "seeds": seeds if isinstance(seeds, str) or seeds is None else format_seeds(seeds)}
        return Samples(_take(x, n, "samples"), kind, protocol)
    if isinstance(obj, (str, Path)):
        p = Path(obj).expanduser()
        if not p.exists():
            raise UserError(f"{p}: no such model, run directory, sample file or image folder")
        from ..models import is_model_path

        if not is_model_path(p):
            if any(v is not None for v in guidance.values()):
                raise UserError(f"{p}: --class and --guidance(-interval) apply when eval samples a model; this is a "
                                f"sample set")
            if _gaussian_asked(gaussian):
                raise UserError(f"{p}: --teleport, --afs and --data-stats apply when eval samples a model; this is a "
                                f"sample set")
            x, kind, file_seeds = _read_samples_file(p)
            x = _take(x, n, str(p))
            protocol = {"source": str(p), "source_sha256": sha256(p) if p.is_file() else None, "sampler": None,
                        "nfe": None, "weights": None,
                        "seeds": format_seeds(file_seeds[: len(x)]) if file_seeds else None}
            return Samples(x, kind, protocol)
        from ..fastpath import accelerate, sampling_calls
        from ..models import load_model, resolve_model_file
        from ..training.distributed import rank_world

        file = resolve_model_file(p, ema)
        model = load_model(p, ema=ema, device=device)
        sampler, nfe = resolve_sampler(model, sampler, nfe)
        gaussian_kw = _gaussian_options(gaussian, p, model)
        schedule_kw = schedule_options(schedule, sampler, nfe + bool(gaussian_kw.get("afs")), model, gen_options,
                                       gaussian_kw.get("teleport"))
        calls = sampling_calls(len(_resolve_seeds(seeds, n)), batch, nfe, rank_world()[1])  # compile if they pay
        model = accelerate(model, device, **fast, calls=calls)  # after schedule_options, which reads the weights digest
        source = {"source": str(p), "model_file": str(file), "model_sha256": sha256(file),
                  "weights": "ema" if ema else "raw"}
        training = run_training(p)
    else:
        model, training = obj, None
        sampler, nfe = resolve_sampler(model, sampler, nfe)
        gaussian_kw = _gaussian_options(gaussian, None, model)
        schedule_kw = schedule_options(schedule, sampler, nfe + bool(gaussian_kw.get("afs")), model, gen_options,
                                       gaussian_kw.get("teleport"))
        source = {"source": f"in-memory {type(obj).__name__}", "weights": "ema" if ema else "raw"}
    from ..fastpath import fast_path_of
    from ..guidance import classes_for_seeds, model_label_dim
    from ..sampling import generate, model_process, sampled_guidance

    seed_list = _resolve_seeds(seeds, n)
    with torch.no_grad():
        x = generate(model, seed_list, batch=batch, device=device, sampler=sampler, nfe=nfe, progress=progress,
                     **guidance, **schedule_kw, **gaussian_kw, **gen_options)
    source["fast_path"] = fast_path_of(model)  # after sampling, whose first calls decide whether to compile
    kind = "image" if x.ndim == 4 else "points"
    protocol = {**source, "sampler": sampler, "nfe": nfe, "schedule": schedule, "seeds": format_seeds(seed_list),
                **sampled_guidance(model, guidance["class_labels"], guidance["guidance"], guidance["guidance_interval"],
                                   sampler=sampler, nfe=nfe, teleport=gaussian_kw.get("teleport"),
                                   afs=bool(gaussian_kw.get("afs")), **schedule_kw, **gen_options),
                **({"level_name": model_process(model).level_name, "teleport": gaussian_kw["teleport"],
                    "afs": gaussian_kw["afs"], "data_stats": gaussian_kw["data_stats"].describe()}
                   if gaussian_kw else {}),
                **({"sampler_options": gen_options} if gen_options else {})}
    classes = classes_for_seeds(guidance["class_labels"], seed_list, model_label_dim(model))
    if classes is not None and classes.ndim == 2:  # one-hot rows
        classes = classes.argmax(1)
    return Samples(x.float().cpu(), kind, protocol, training, True, classes)


def _gaussian_asked(gaussian: dict | None) -> bool:
    return bool(gaussian) and (gaussian.get("teleport") is not None or bool(gaussian.get("afs"))
                               or gaussian.get("data_stats") is not None)


def _gaussian_options(gaussian: dict | None, path: Path | None, model: Any) -> dict:
    """``sample``'s teleport / afs / data_stats keywords with the statistics resolved for the model; {} if unused."""
    from ..sampling import gaussian_options

    gaussian = gaussian or {}
    return gaussian_options(gaussian.get("teleport"), bool(gaussian.get("afs")), gaussian.get("data_stats"), path,
                            model)


def _take(x: Tensor, n: int | None, label: str) -> Tensor:
    if n is None:
        return x
    if n > len(x):
        raise UserError(f"{label}: holds {len(x)} samples, fewer than --n {n}")
    return x[:n]
