"""Teacher trajectories for DSNO distillation: per seed, the noise and the teacher's PF-ODE states at M output times.

**What is stored.** A deterministic EDM-family sampler with N steps walks the sigma grid
``sigma_T = sigmas[0] > ... > sigmas[N-1] > sigmas[N] = 0`` through the states ``x_0 = sigma_T z, x_1, ..., x_N``
(EDM's scale-free x-hat in sigma-space; ``x_N`` is the sample). Its own time is the normalised step index
``tau_j = 1 - j / N`` (1 at the noise, 0 at the data), so the output grid follows the sampler's schedule. The M output
times are

    tau_m = (m / M)^p,   m = 0 .. M-1,   p = 1 ('uniform') or 2 ('quadratic', DSNO's 'quad', dense near the data),

taken at the nearest step, ``j_m = N - floor(N tau_m + 1/2)`` (distinct and >= 1, else more steps are needed), and
stored exactly, with no interpolation: ``x[:, m]`` is the sampler's iterate ``x_{j_m}`` at ``sigma_m = sigmas[j_m]``,
and ``x[:, 0] = x_N`` is the final sample, what ``fastdiffusion.sample`` returns for the same noise. (DSNO's code
stores the teacher's data predictions instead; the student's output form, ``OneStepGenerator``, makes a data
estimate of every stored state.) With M = 4 this is DSNO's grid: tau = 0, 1/16, 1/4, 9/16 (quadratic) or 0, 1/4,
1/2, 3/4 (uniform).

**Files.** ``OUT/manifest.json`` (teacher, sampler, grid, sigmas, seeds, shard list; written first) and
``OUT/shard-00000.safetensors``, ... each holding K consecutive seeds of the seed list:

    noise  (K, *data_shape)     float32        z = SeededNoise([seed]).randn(data_shape)
    x      (K, M, *data_shape)  float16/32     x[:, m] = x_{j_m} at sigma_m; m = 0 the sample
    seeds  (K,)                 int64

A class-conditional teacher is sampled with ``class_labels`` (a class, 'random' or one per seed) and ``guidance``
W, optionally only on ``guidance_interval`` (``fastdiffusion.guidance``); the manifest then records ``guidance``
(class, W, interval, network evaluations per sample: the teacher's NFE counts guided calls, 2 network evaluations
each when guided with W != 1) and each shard ``labels``: (K,)
int64 classes (or the (K, L) one-hot rows given).

A shard is written atomically (temp file + rename) once complete, so an interrupted run is resumed by running the same
command again: complete shards are skipped. Under torchrun rank r generates shards r, r + world, ...
Size: seeds x M x prod(data_shape) x (2 or 4) bytes for ``x``, plus 4 bytes per noise value.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_bytes, atomic_write_json, sha256
from ..errors import UserError
from ..fastpath import accelerate, sampling_calls
from ..guidance import ClassSpec, Interval, classes_for_seeds, describe, model_label_dim
from ..models import load_model, model_meta, resolve_model_file
from ..samplers import make_sigmas
from ..samplers.tuning import schedule_options
from ..sampling import check_sampler_args, model_family, sample, sampled_guidance, sampling_range
from ..seeds import SeededNoise, seed_runs
from ..training.distributed import rank_world

__all__ = ["TrajectorySet", "generate_trajectories", "output_steps", "read_manifest", "shard_status",
           "size_estimate", "teacher_states"]

FORMAT = "fastdiffusion-dsno-trajectories"
VERSION = 1
GRIDS = {"uniform": 1, "quadratic": 2}
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
CONTENTS = ("noise (K, *data_shape) float32: z, the sampler starts at x_T = sigma_max z; x (K, M, *data_shape): "
            "x[:, m] = the sampler's state at step step_index[m], noise level sigmas[m] (EDM sigma-space); m = 0 is "
            "the final sample (sigma 0); seeds (K,) int64")


def output_steps(n_steps: int, times: int, grid: str) -> list[int]:
    """``j_m = N - floor(N (m / M)^p + 1/2)`` for m = 0 .. M-1 (p = 1 uniform, 2 quadratic): the step index of each
    output time on an N-step grid; m = 0 is the last step (the sample)."""
    if grid not in GRIDS:
        raise UserError(f"unknown --grid '{grid}': choose one of {', '.join(GRIDS)}")
    if times < 1:
        raise UserError(f"--times must be >= 1, got {times}")
    steps = [n_steps - math.floor(n_steps * (m / times) ** GRIDS[grid] + 0.5) for m in range(times)]
    if len(set(steps)) < times or min(steps) < 1:
        raise UserError(f"{times} {grid} output times need distinct sampler steps after the first, but {n_steps} "
                        f"step(s) give step indices {steps}: raise --nfe or lower --times")
    return steps


def teacher_states(model: nn.Module, noise: Tensor, *, sampler: str, nfe: int, steps: Sequence[int],
                   noise_fn: SeededNoise | None = None, **sample_kwargs: Any) -> Tensor:
    """(N, M, *shape): the sampler's states ``x_{steps[m]}`` for standard-normal ``noise``, from one sampling run.

    The sampler's callback after step i carries the state x_{i+1}; the state at the last step is the returned sample.
    """
    wanted = {j: m for m, j in enumerate(steps)}
    out = noise.new_empty((noise.shape[0], len(steps), *noise.shape[1:]), dtype=torch.float32)

    def keep(info: dict) -> None:
        m = wanted.get(int(info["i"]) + 1)
        if m is not None:
            out[:, m] = info["x"]

    final = sample(model, noise, sampler=sampler, nfe=nfe, noise_fn=noise_fn, callback=keep, **sample_kwargs)
    out[:, wanted[max(steps)]] = final  # the sample itself, whatever the sampler's last callback says
    return out


def size_estimate(num_seeds: int, times: int, data_shape: Sequence[int], dtype: str) -> dict[str, int]:
    """Bytes of the stored states (seeds x M x prod(shape) x 2 or 4) and of the float32 noise."""
    values = int(np.prod(data_shape))
    states = num_seeds * times * values * DTYPES[dtype].itemsize
    return {"states": states, "noise": num_seeds * values * 4, "total": states + num_seeds * values * 4}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def _expand(runs: list[list[int]]) -> list[int]:
    return [s for lo, hi in runs for s in range(lo, hi + 1)]


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _plan(model: nn.Module, teacher: dict, seeds: Sequence[int], *, sampler: str, nfe: int, times: int, grid: str,
          schedule: str | None, shard_size: int, dtype: str, hyper: dict,
          conditioning: tuple[ClassSpec, float | None, Interval | None]) -> dict:
    """The manifest: everything that determines the shards' contents (``conditioning``: class labels, W and the
    guidance interval)."""
    spec = check_sampler_args(sampler, nfe, hyper)
    if model_family(model) != "edm" or spec.family != "edm":
        raise UserError(f"trajectories need an EDM-family model and sampler (got a {model_family(model)} model and "
                        f"the {spec.family} sampler '{sampler}')")
    if spec.stochastic or float(hyper.get("churn", 0.0)) > 0:
        raise UserError(f"sampler '{sampler}' is stochastic here: trajectories need a deterministic sampler")
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if len(set(seeds)) != len(seeds):
        raise UserError("--seeds names a seed twice")
    n_steps = spec.steps(nfe)
    lo, hi = sampling_range(model)
    chosen = schedule_options(schedule, sampler, nfe, model)
    levels = chosen.pop("sigmas", None)
    if levels is None:
        levels = make_sigmas(chosen.pop("schedule") or spec.schedule, n_steps, lo, hi)
    hyper = {**chosen, **hyper}  # a schedule file's fitted coefficients, unless given
    grid_sigmas = levels.tolist()
    steps = output_steps(n_steps, times, grid)
    sigmas = [grid_sigmas[j] for j in steps]
    last_positive = grid_sigmas[-2]
    counts = [min(shard_size, len(seeds) - i) for i in range(0, len(seeds), shard_size)]
    guidance = sampled_guidance(model, *conditioning, sampler=sampler, nfe=nfe, sigmas=levels, **hyper)
    return {
        "format": FORMAT, "version": VERSION, "contents": CONTENTS, "teacher": teacher,
        "sampler": sampler, "nfe": nfe, "schedule": schedule or spec.schedule, "hyper": hyper,
        "num_steps": n_steps, "sigma_grid": grid_sigmas, "sigma_max": grid_sigmas[0],
        "times": times, "grid": grid, "tau": [(m / times) ** GRIDS[grid] for m in range(times)],
        "step_index": steps, "sigmas": sigmas, "cond_sigmas": [s if s > 0 else last_positive for s in sigmas],
        "data_shape": list(model.data_shape), "dtype": dtype, "shard_size": shard_size,
        "num_seeds": len(seeds), "seeds": seed_runs(seeds),
        "shards": [{"file": _shard_name(i), "count": c} for i, c in enumerate(counts)],
        **({"guidance": guidance} if guidance else {}),
    }


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable trajectory manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a fastdiffusion trajectory manifest")
    return manifest


def _shard_seeds(manifest: dict, index: int) -> list[int]:
    k = manifest["shard_size"]
    return _expand(manifest["seeds"])[index * k:(index + 1) * k]


def _shard_complete(path: Path, seeds: list[int]) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("seeds").tolist() == seeds and set(f.keys()) >= {"noise", "x"}
    except Exception:  # a truncated or foreign file: regenerate it
        return False


def shard_status(root: str | Path, manifest: dict | None = None) -> list[bool]:
    """For each shard of the manifest, whether its file is complete (present, readable, holding its seeds)."""
    manifest = manifest or read_manifest(root)
    seeds = _expand(manifest["seeds"])
    k = manifest["shard_size"]
    return [_shard_complete(Path(root) / s["file"], seeds[i * k:(i + 1) * k]) for i, s in enumerate(manifest["shards"])]


def _same_settings(a: dict, b: dict) -> list[str]:
    """Keys whose values differ, ignoring where the teacher file was found."""
    strip = lambda m: {**m, "teacher": {k: v for k, v in m.get("teacher", {}).items() if k != "path"}}  # noqa: E731
    a, b = strip(a), strip(b)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def generate_trajectories(model: str | Path | nn.Module, out: str | Path, seeds: Sequence[int], *,
                          sampler: str = "heun", nfe: int = 35, times: int = 4, grid: str = "quadratic",
                          schedule: str | None = None, shard_size: int = 1000, dtype: str = "fp16", batch: int = 256,
                          device: str | torch.device = "cpu", ema: bool = True, fast: dict | None = None,
                          progress: bool = True, rank: int | None = None, world: int | None = None,
                          class_labels: ClassSpec = None, guidance: float | None = None,
                          guidance_interval: Interval | None = None, **hyper: Any) -> dict:
    """Write the trajectories of ``seeds`` to ``out`` (see the module docstring); returns the manifest.

    ``model`` is a model file / checkpoint / run directory (``load_model``; its sha256 goes into the manifest) or a
    loaded EDM-family model. Resumable: complete shards are skipped; a manifest with other settings is an error. Rank
    ``rank`` of ``world`` (default: torch.distributed's) writes shards rank, rank + world, ...
    """
    if isinstance(model, (str, Path)):
        file = resolve_model_file(model, ema)
        teacher = {"path": str(file), "sha256": sha256(file)}
        calls = sampling_calls(len(seeds), min(batch, shard_size), nfe, rank_world()[1] if world is None else world)
        model = accelerate(load_model(file, ema=ema, device=device), device, **(fast or {}), calls=calls)
    else:
        teacher = {"path": None, "sha256": None}
    teacher["meta"] = model_meta(model)
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    default_rank, default_world = rank_world()
    rank = default_rank if rank is None else rank
    world = default_world if world is None else world
    seeds = [int(s) for s in seeds]
    labels = classes_for_seeds(class_labels, seeds, model_label_dim(model))
    manifest = _plan(model, teacher, seeds, sampler=sampler, nfe=nfe, times=times, grid=grid, schedule=schedule,
                     shard_size=shard_size, dtype=dtype, hyper=hyper,
                     conditioning=(class_labels, guidance, guidance_interval))
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.json"
    if not path.exists() and (rank == 0 or default_world == 1):  # under torchrun rank 0 writes it, the others wait
        atomic_write_json(path, manifest)
    _barrier()
    differ = _same_settings(read_manifest(root), manifest)
    if differ:
        raise UserError(f"{root} holds trajectories with other settings ({', '.join(differ)}): use the same "
                        f"settings to resume, or another --out")

    mine = list(range(rank, len(manifest["shards"]), world))
    done = {i for i in mine if _shard_complete(root / _shard_name(i), _shard_seeds(manifest, i))}
    shape, m_times = tuple(manifest["data_shape"]), manifest["times"]
    if rank == 0 and progress:
        size = size_estimate(len(seeds), m_times, shape, dtype)
        print(f"trajectories: {len(seeds)} seeds x {m_times} times x {int(np.prod(shape))} values x "
              f"{DTYPES[dtype].itemsize} B = {_human(size['states'])} (+ {_human(size['noise'])} of noise) in "
              f"{len(manifest['shards'])} shard(s) of {shard_size}; {sampler} at {nfe} NFE"
              f"{'; ' + describe(manifest['guidance']) if labels is not None else ''}; sigmas "
              f"{', '.join(f'{s:.4g}' for s in manifest['sigmas'])} -> {root}")
    todo = [i for i in mine if i not in done]
    bar = tqdm(total=sum(manifest["shards"][i]["count"] for i in mine), desc="trajectories",
               initial=sum(manifest["shards"][i]["count"] for i in done), disable=not progress or rank != 0,
               dynamic_ncols=True)
    t0, n_new = time.perf_counter(), 0
    for i in todo:
        for stale in root.glob(f".{_shard_name(i)}.*.tmp"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)
        shard_seeds = _shard_seeds(manifest, i)
        shard_labels = None if labels is None else labels[i * shard_size:(i + 1) * shard_size]
        noises, states = [], []
        for lo in range(0, len(shard_seeds), batch):
            noise_fn = SeededNoise(shard_seeds[lo:lo + batch])
            z = noise_fn.randn(shape, device)
            x = teacher_states(model, z, sampler=sampler, nfe=nfe, steps=manifest["step_index"],
                               noise_fn=noise_fn, sigmas=torch.tensor(manifest["sigma_grid"], dtype=torch.float64),
                               guidance=guidance, guidance_interval=guidance_interval,
                               class_labels=None if shard_labels is None else shard_labels[lo:lo + batch],
                               **manifest["hyper"])
            noises.append(z.cpu())
            states.append(x.to(DTYPES[dtype]).cpu())
            bar.update(len(noise_fn.seeds))
        tensors = {"noise": torch.cat(noises).contiguous(), "x": torch.cat(states).contiguous(),
                   "seeds": torch.tensor(shard_seeds, dtype=torch.int64),
                   **({} if shard_labels is None else {"labels": shard_labels.contiguous()})}
        atomic_write_bytes(root / _shard_name(i), save(tensors, metadata={"fastdiffusion": json.dumps(
            {"shard": i, "sigmas": manifest["sigmas"], "step_index": manifest["step_index"]})}))
        n_new += len(shard_seeds)
    bar.close()
    elapsed = time.perf_counter() - t0
    _barrier()
    if rank == 0 and progress:
        status = shard_status(root, manifest)
        rate = f", {n_new / elapsed:.1f} seeds/s on rank 0" if n_new else ""
        print(f"{sum(status)}/{len(status)} shards complete in {root}{rate}")
    return manifest


class TrajectorySet:
    """The shards of a trajectory directory, memory-mapped: rows are read on demand and the page cache is shared by
    all ranks of a machine, so sets larger than RAM work. ``rows(idx)`` -> (noise (n, *shape), x (n, M, *shape)),
    float32 on the CPU."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(root)
        status = shard_status(root, self.manifest)
        if not all(status):
            missing = [s["file"] for s, ok in zip(self.manifest["shards"], status, strict=True) if not ok]
            raise UserError(f"{root}: {len(missing)} shard(s) missing or incomplete (first: {missing[0]}); run "
                            f"`fastdiffusion distill trajectories` again with the same settings to finish them")
        maps = [_memmap_tensors(self.root / s["file"]) for s in self.manifest["shards"]]
        self.noise = [m["noise"] for m in maps]
        self.x = [m["x"] for m in maps]
        self.starts = np.cumsum([0] + [s["count"] for s in self.manifest["shards"]])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, idx: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        idx = np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx, dtype=np.int64)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        shape = tuple(self.manifest["data_shape"])
        noise = np.empty((len(idx), *shape), np.float32)
        x = np.empty((len(idx), self.manifest["times"], *shape), np.float32)
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - self.starts[s]
            noise[sel] = self.noise[s][local]
            x[sel] = self.x[s][local]
        return torch.from_numpy(noise), torch.from_numpy(x)


_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}


def _memmap_tensors(path: Path) -> dict[str, np.memmap]:
    """The tensors of a safetensors file as read-only memmaps: 8-byte little-endian header length, JSON header with
    each tensor's dtype, shape and byte range, then the data."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for name, info in header.items():
        if name != "__metadata__":
            lo, _ = info["data_offsets"]
            out[name] = np.memmap(path, dtype=_NP_DTYPES[info["dtype"]], mode="r", offset=8 + n + lo,
                                  shape=tuple(info["shape"]))
    return out
