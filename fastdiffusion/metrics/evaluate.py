"""`evaluate`: every quality number of a model or a sample set, each with its full protocol.

What is evaluated (`model_or_samples`): a `Denoiser` or any `D(x, sigma)` callable with a `data_shape`; a tensor of
samples ([−1, 1] images (N, C, H, W) or points (N, D)); or a path: a run directory, checkpoint directory or model
.safetensors (samples are generated for `seeds` with `sampler` / `nfe`, EMA weights unless ema=False, sharded
across torchrun ranks; a class-conditional model takes `class_labels` K | 'random' and `guidance` W, see
`fastdiffusion.guidance`, and the protocol records them with the network evaluations per sample); an .npz written by
`fastdiffusion sample` (arrays samples and seeds) or any image .npz; an image folder or .zip.

Reference (`reference`): `DATASET@SPLIT`, `DATASET`, `SPLIT` or a statistics .npz (FID only). DATASET is a bundled
name or a path; it defaults to the run's training data (config.json beside the checkpoints) or else the bundled
digits. SPLIT is train | test | all; it defaults to test for bundled sets and to all for paths (a folder is used as
given). Images are compared at the samples' resolution (references are resized to it) and the protocol names the
reference at that resolution (`digits16@test` for 16-px samples). The bundled digits are grayscale: colour samples
need a reference of their own. When the run's config.json records its training data and split, every reference that
overlaps them is reported in `warnings` (a model file without its run cannot be checked, and says so).

Metrics (`metrics`):
    fd-digits     FD in the digits classifier's 64-d features vs the reference split (digits only)
    kid-digits    KID (`kid.py`) in the same features
    class-accuracy  the fraction of samples the digits classifier assigns the class they were generated for
                  (a model sampled with `class_labels`; digits only)
    prdc          precision / recall (k-NN manifolds, k = 3) and density / coverage in the same features
    memorization  nearest-neighbour distances to the TRAIN split vs the held-out TEST split's (pixels; digits also
                  in classifier features)
    fid           FID with the 2015 Inception network (torch-fidelity; local weights file, see `fid.py`)
    kid           KID in the same Inception features
    sliced        sliced Wasserstein-2 (256 directions, seed 0) in pixel / point space vs the reference set
    gmm-nll       exact NLL under the true mixture and SW₂ to fresh true samples (gmm, gmm64; see `gmm.py`)
Default: fd-digits, kid-digits, prdc, memorization for digits (+ class-accuracy with class labels); sliced,
memorization for other images; sliced (+ gmm-nll for mixtures) for points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import DIGITS_SETS
from ..errors import UserError
from .sources import Samples, load_source

__all__ = ["METRICS", "Reference", "evaluate", "parse_reference"]

METRICS = ("fd-digits", "kid-digits", "class-accuracy", "prdc", "memorization", "fid", "kid", "sliced", "gmm-nll")
SLICED_PROJECTIONS = 256
POINTS_REFERENCE = 20_000  # points drawn for a generated (toy / mixture) reference set, as in training


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class Reference:
    """A parsed `reference`: a dataset spec and split, or a statistics file (FID only)."""

    dataset: str | None
    split: str
    stats_file: Path | None = None
    cache: dict = field(default_factory=dict)

    @property
    def is_digits(self) -> bool:
        return self.dataset is not None and self.dataset.strip().lower() in DIGITS_SETS

    def name(self, resolution: int | None = None) -> str:
        """The data set's name (digits named by the resolution they are compared at)."""
        if self.is_digits and resolution:
            return "digits" if resolution == 8 else f"digits{resolution}"
        return str(self.dataset)

    def label(self, resolution: int | None = None, split: str | None = None) -> str:
        """'NAME@SPLIT', or the statistics file."""
        if self.stats_file is not None:
            return str(self.stats_file)
        return f"{self.name(resolution)}@{split or self.split}"

    def load(self, split: str | None = None, resolution: int | None = None):
        """The reference `Dataset` (for `split`, default self.split), images at `resolution`, cached.

        Generated point sets have POINTS_REFERENCE points (seed 0 for train/all, another seed for test).
        """
        from ..data import load_dataset

        split = split or self.split
        key = (split, resolution)
        if key not in self.cache:
            if self.dataset is None:
                raise UserError("no reference data set: name one with --reference (e.g. digits@test or gmm64)")
            spec = "digits" if self.is_digits else self.dataset
            ds = load_dataset(spec, split=split, n_points=POINTS_REFERENCE)
            if ds.kind == "image" and resolution and tuple(ds.shape[1:]) != (resolution, resolution):
                ds = load_dataset(spec, resolution=resolution, split=split)
            self.cache[key] = ds
        return self.cache[key]


def parse_reference(reference: str | Path | None, data: str | None, kind: str) -> Reference:
    """See the module docstring for the syntax and defaults."""
    from ..data import BUNDLED
    from ..data.images import SPLITS
    from .frechet import GaussianStats

    default = data or ("digits" if kind == "image" else None)
    if reference is None or str(reference).strip() == "":
        return Reference(default, "test" if default is None or _bundled(default) else "all")
    text = str(reference).strip()
    if text in SPLITS:
        return Reference(default, text)
    if GaussianStats.is_stats_file(text):
        return Reference(None, "all", Path(text).expanduser())
    spec, at, split = text.rpartition("@")
    if at and split in SPLITS and spec:
        return Reference(spec, split)
    if at and spec and not Path(text).expanduser().exists():
        raise UserError(f"--reference {text}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if text.lower() not in BUNDLED and not Path(text).expanduser().exists() and ".npz:" not in text.lower():
        raise UserError(
            f"--reference {text}: not a bundled data set ({', '.join(BUNDLED)}), a split, or an existing path"
        )
    return Reference(text, "test" if _bundled(text) else "all")


def _bundled(spec: str) -> bool:
    from ..data import BUNDLED

    return spec.strip().lower() in BUNDLED


# ------------------------------------------------------------------------------------------------ metrics


def _digits_only(name: str, ref: Reference, s: Samples) -> None:
    if s.kind != "image":
        raise UserError(f"{name} needs images, but the samples are points")
    if not ref.is_digits:
        raise UserError(f"{name} compares against the bundled digits; the reference here is {ref.label()}: "
                        f"use --reference digits@test (or another split) or drop {name}")


def _resolution(s: Samples) -> int | None:
    if s.kind != "image":
        return None
    h, w = s.x.shape[2:]
    if h != w:
        raise UserError(f"samples are {w}x{h} (WxH); reference images can be matched only to square samples")
    return int(h)


def _check_shape(name: str, s: Samples, ds: Any, label: str) -> Any:
    """The reference `Dataset` ds, after checking that its items have the samples' shape."""
    if tuple(ds.shape) != tuple(s.x.shape[1:]):
        raise UserError(f"{name}: samples have shape {tuple(s.x.shape[1:])}, the reference {label} has "
                        f"{tuple(ds.shape)}; name a reference of the samples' kind with --reference")
    return ds


def _digits_protocol() -> dict:
    from .digits_classifier import FEATURE_NETWORK, classifier_info

    info = classifier_info()
    return {"feature_network": FEATURE_NETWORK, "feature_network_sha256": info["sha256"],
            "feature_network_test_accuracy": info.get("test_accuracy")}


def _sample_features(s: Samples, ctx: dict) -> Tensor:
    """The samples' digits-classifier features, computed once per evaluation."""
    if "digits_features" not in ctx:
        from .digits_classifier import digits_features

        ctx["digits_features"] = digits_features(s.x, device=ctx["device"])
    return ctx["digits_features"]


def _digits_reference(s: Samples, ref: Reference) -> Tensor:
    """Classifier features of the reference split at the samples' resolution (what `ref.label(res)` names)."""
    from .digits_classifier import digits_reference

    return digits_reference(ref.split, _resolution(s))


def _metric_fd_digits(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .frechet import FeatureStats

    _digits_only("fd-digits", ref, s)
    feats = _sample_features(s, ctx)
    ref_feats = _digits_reference(s, ref)
    value = FeatureStats().update(feats).stats().frechet_distance(FeatureStats().update(ref_feats).stats())
    return {"value": value, "protocol": {**_digits_protocol(), "n_reference": len(ref_feats),
                                         "reference": ref.label(_resolution(s))}}


def _metric_kid_digits(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .kid import kid

    _digits_only("kid-digits", ref, s)
    ref_feats = _digits_reference(s, ref)
    out = kid(_sample_features(s, ctx).to(ctx["device"]), ref_feats.to(ctx["device"]))
    return {"value": out.pop("value"), "std": out.pop("std"),
            "protocol": {**_digits_protocol(), "n_reference": len(ref_feats), "reference": ref.label(_resolution(s)),
                         **out}}


def _metric_class_accuracy(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .digits_classifier import classify_features

    _digits_only("class-accuracy", ref, s)
    if s.classes is None:
        raise UserError("class-accuracy needs samples generated for known classes: evaluate a conditional model "
                        "with --class K or --class random")
    correct = classify_features(_sample_features(s, ctx), ctx["device"]) == s.classes
    return {"value": float(correct.double().mean()), "protocol": {**_digits_protocol(), "n_reference": None,
                                                                  "reference": "the requested classes"}}


def _metric_prdc(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .quality import prdc

    _digits_only("prdc", ref, s)
    feats = _sample_features(s, ctx)
    ref_feats = _digits_reference(s, ref)
    dev = ctx["device"]
    out = prdc(ref_feats.to(dev), feats.to(dev), k=3)
    return {**out, "k": 3, "protocol": {**_digits_protocol(), "n_reference": len(ref_feats),
                                        "reference": ref.label(_resolution(s))}}


def _metric_memorization(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .quality import memorization

    if ref.dataset is None:
        raise UserError("memorization needs the training data set: name it with --reference DATASET")
    res = _resolution(s)
    train = _check_shape("memorization", s, ref.load("train", res), ref.label(res, "train")).x
    held = ref.load("test", res).x
    dev = ctx["device"]
    out: dict[str, Any] = {"pixels": memorization(s.x.to(dev), train.to(dev), held.to(dev))}
    protocol: dict[str, Any] = {
        "feature_network": {"pixels": f"raw values ({'x'.join(map(str, s.x.shape[1:]))}), Euclidean"},
        "feature_network_sha256": {"pixels": None},
        "n_reference": {"train": len(train), "heldout": len(held)},
        "reference": {"train": ref.label(res, "train"), "heldout": ref.label(res, "test")},
    }
    if ref.is_digits and s.kind == "image":  # reference images at the samples' resolution: copies give 0
        from .digits_classifier import digits_features

        feats = _sample_features(s, ctx)
        out["features"] = memorization(feats.to(dev), digits_features(train, device=dev).to(dev),
                                       digits_features(held, device=dev).to(dev))
        dp = _digits_protocol()
        protocol["feature_network"]["features"] = dp["feature_network"]
        protocol["feature_network_sha256"]["features"] = dp["feature_network_sha256"]
    out["flagged"] = any(v["flagged"] for v in out.values() if isinstance(v, dict))
    return {**out, "protocol": protocol}


def _inception_features(s: Samples, ref: Reference, ctx: dict) -> tuple[Tensor, Tensor | None, dict]:
    """Inception features of the samples and of the reference images (None for a statistics file), and the
    network's info; extracted once per evaluation for fid and kid."""
    from .fid import image_features, load_inception

    if s.kind != "image":
        raise UserError("fid and kid need images, but the samples are points")
    if "inception" not in ctx:
        dev, batch = ctx["device"], ctx["batch"]
        extractor, info = load_inception(ctx["inception_file"], dev)
        ref_images = None if ref.stats_file is not None else ref.load(resolution=_resolution(s)).x
        ctx["inception"] = (image_features(s.x, extractor, batch, dev),
                            None if ref_images is None else image_features(ref_images, extractor, batch, dev), info)
    return ctx["inception"]


def _metric_fid(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .fid import fid_from_stats
    from .frechet import FeatureStats, GaussianStats

    feats, ref_feats, info = _inception_features(s, ref, ctx)
    res = _resolution(s)
    save = ctx.get("save_reference_stats")
    if ref_feats is None:
        reference = GaussianStats.load(ref.stats_file)
    else:
        reference = FeatureStats().update(ref_feats).stats(feature_network=info["feature_network"],
                                                           feature_network_sha256=info["feature_network_sha256"],
                                                           reference=ref.label(res))
        if save and ctx["is_main"]:
            reference.save(save)
    out = fid_from_stats(FeatureStats().update(feats).stats(), reference, info)
    if save and ref.stats_file is None:
        out["reference_stats_file"] = str(save)
    value = out.pop("value")
    n_gen = out.pop("n_generated")
    return {"value": value, "protocol": {**out, "reference": ref.label(res), "n_generated": n_gen}}


def _metric_kid(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .kid import kid

    feats, ref_feats, info = _inception_features(s, ref, ctx)
    out = kid(feats.to(ctx["device"]), ref_feats.to(ctx["device"]))
    return {"value": out.pop("value"), "std": out.pop("std"),
            "protocol": {**info, "n_reference": len(ref_feats), "reference": ref.label(_resolution(s)), **out}}


def _metric_sliced(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .sliced import sliced_wasserstein

    res = _resolution(s)
    ds = _check_shape("sliced", s, ref.load(resolution=res), ref.label(res))
    dev = ctx["device"]
    out: dict[str, Any] = {"value": sliced_wasserstein(s.x.to(dev), ds.x.to(dev), SLICED_PROJECTIONS,
                                                       torch.Generator().manual_seed(0))}
    if ds.kind == "points":  # generated data are infinite: the value a perfect sampler of this size gets
        from ..data import load_dataset

        fresh = load_dataset(ref.dataset, split="train", n_points=len(s.x), seed=1)
        out["floor"] = sliced_wasserstein(fresh.x.to(dev), ds.x.to(dev), SLICED_PROJECTIONS,
                                          torch.Generator().manual_seed(0))
    space = "pixels" if s.kind == "image" else "points"
    return {**out, "protocol": {"feature_network": f"none ({space})", "feature_network_sha256": None,
                                "n_reference": len(ds), "reference": ref.label(res),
                                "n_projections": SLICED_PROJECTIONS, "projection_seed": 0}}


def _metric_gmm(s: Samples, ref: Reference, ctx: dict) -> dict:
    from .gmm import gmm_metrics

    ds = ref.load() if ref.dataset is not None else None
    if ds is None or ds.gmm is None:
        raise UserError(f"gmm-nll needs a Gaussian-mixture data set (gmm, gmm64) as --reference, "
                        f"not {ref.label()}")
    out = gmm_metrics(s.x, ds.gmm, n_reference=POINTS_REFERENCE, seed=0, n_projections=SLICED_PROJECTIONS)
    return {**out, "protocol": {"feature_network": "none (exact density)", "feature_network_sha256": None,
                                "n_reference": POINTS_REFERENCE, "reference": f"{ref.dataset} (fresh draws)"}}


_COMPUTE = {"fd-digits": _metric_fd_digits, "kid-digits": _metric_kid_digits,
            "class-accuracy": _metric_class_accuracy, "prdc": _metric_prdc,
            "memorization": _metric_memorization, "fid": _metric_fid, "kid": _metric_kid, "sliced": _metric_sliced,
            "gmm-nll": _metric_gmm}


def _same_data(a: str, b: str) -> bool:
    """Whether two data specs name the same images: the bundled digits at any resolution are one set, other bundled
    names compare by name, paths by their resolved location."""
    def key(spec: str) -> str:
        name = spec.strip().lower()
        return "digits" if name in DIGITS_SETS else name if _bundled(name) else str(Path(spec).expanduser().resolve())

    return key(a) == key(b)


def _splits_overlap(a: str, b: str) -> bool:
    """train and test are disjoint parts of all."""
    return a == b or "all" in (a, b)


def _overlap_warnings(s: Samples, ref: Reference, chosen: Sequence[str]) -> list[str]:
    """One line per way the reference overlaps the images the model trained on (the run's recorded data and split),
    or one saying that a model without its run's config.json cannot be checked."""
    if s.kind != "image" or ref.dataset is None:
        return []
    if s.training is None:
        return [f"cannot check whether the reference overlaps the model's training data: {s.protocol['source']} has "
                f"no run config.json recording its data and split"] if s.from_model else []
    if not _same_data(s.training["data"], ref.dataset):
        return []
    res, split = _resolution(s), s.training["data_split"]
    trained = f"{s.training['data']}@{split}"
    out = []
    compared = [m for m in chosen if m not in ("memorization", "gmm-nll", "class-accuracy")]
    if compared and _splits_overlap(split, ref.split):
        out.append(f"the reference {ref.label(res)} of {', '.join(compared)} overlaps the model's training data "
                   f"({trained}): these numbers measure fit to training images; evaluate on a split it did not train "
                   f"on (train with --data-split train, evaluate with --reference test)")
    if "memorization" in chosen and _splits_overlap(split, "test"):
        out.append(f"memorization's held-out set {ref.label(res, 'test')} is in the model's training data "
                   f"({trained}): the check cannot tell copies from generalisation; train with --data-split train")
    return out


def _default_metrics(s: Samples, ref: Reference) -> list[str]:
    if s.kind == "image":
        if not ref.is_digits:
            return ["sliced", "memorization"]
        return ["fd-digits", "kid-digits", *(["class-accuracy"] if s.classes is not None else []), "prdc",
                "memorization"]
    has_gmm = ref.dataset is not None and ref.dataset.strip().lower() in ("gmm", "gmm64")
    return ["sliced", "gmm-nll"] if has_gmm else ["sliced"]


def _parse_metrics(metrics: str | Sequence[str] | None) -> list[str] | None:
    if metrics is None:
        return None
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise UserError(f"unknown metric(s) {', '.join(bad)}: choose from {', '.join(METRICS)}")
    if not names:
        raise UserError("--metrics names no metric")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------------- entry


def evaluate(
    model_or_samples: Any,
    metrics: str | Sequence[str] | None = None,
    n: int | None = None,
    reference: str | Path | None = None,
    sampler: str | None = None,
    nfe: int | None = None,
    seeds: str | Sequence[int] | None = None,
    ema: bool = True,
    batch: int = 256,
    device: str | torch.device = "auto",
    *,
    inception: str | Path | None = None,
    sampler_options: dict | None = None,
    save_reference_stats: str | Path | None = None,
    progress: bool = False,
    fast: dict | None = None,
    class_labels: int | str | Sequence[int] | None = None,
    guidance: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    schedule: str | None = None,
    teleport: float | None = None,
    afs: bool = False,
    data_stats: Any = None,
) -> dict:
    """Compute `metrics` for `model_or_samples` (see the module docstring) and return a JSON-ready dict:

        {"results": {metric: {<numbers>, "protocol": {...}}}, "protocol": {...}, "environment": {...},
         "warnings": [...]}

    Each metric's protocol is complete on its own: metric, feature network and its sha256, number of generated and
    reference samples, reference set, sampler, NFE, EMA or raw, seeds, source. When generating, `n` samples (default
    1000) are made for seeds 0..n−1 unless `seeds` says otherwise; for sample files `n` takes the first n.
    A class-conditional model is sampled with `class_labels` (K, 'random' or one per seed) and `guidance` W (on noise
    levels in `guidance_interval` (lo, hi] only, if given).
    `teleport` (sigma_T), `afs` and `data_stats` (DATA[@SPLIT], a statistics file or a `GaussianDataStats`; default:
    the model's own, `data.stats.resolve_data_stats`) are `sample`'s Gaussian shortcuts; the protocol
    records them and the statistics' source.
    `warnings` lists the references that overlap the model's recorded training data.
    Under torchrun every rank returns the same dict (generation and Inception features are sharded). A model loaded
    from a path samples on the fast path (``fastpath.accelerate``; ``fast`` holds its switches, default automatic).
    """
    import fastdiffusion

    from ..training import distributed

    if n is not None and n < 2:
        raise UserError(f"--n must be >= 2, got {n}")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    chosen = _parse_metrics(metrics)
    d = distributed.setup(str(device))
    s = load_source(model_or_samples, n, seeds, sampler, nfe, ema, batch, d.device, dict(sampler_options or {}),
                     progress and d.is_main, dict(fast or {}), {"class_labels": class_labels, "guidance": guidance,
                                                          "guidance_interval": guidance_interval},
                     schedule, {"teleport": teleport, "afs": afs, "data_stats": data_stats})
    if len(s.x) < 4:
        raise UserError(f"evaluation needs at least 4 samples, got {len(s.x)}")
    if not torch.isfinite(s.x).all():
        raise UserError("the samples contain NaN or infinite values")
    ref = parse_reference(reference, s.training["data"] if s.training else None, s.kind)
    if s.kind == "image" and ref.is_digits and s.x.shape[1] != 1:
        raise UserError(f"{s.protocol['source']}: {s.x.shape[1]}-channel images, but the reference "
                        f"{ref.label(_resolution(s))} is the bundled grayscale digits (the default when no run names "
                        f"its data): name your data with --reference DATASET[@SPLIT] (a folder, .zip or .npz of "
                        f"images, or a FID statistics .npz)")
    chosen = chosen or _default_metrics(s, ref)
    if ref.stats_file is not None and set(chosen) - {"fid"}:
        raise UserError(f"--reference {ref.stats_file} is a statistics file, usable only by fid; "
                        f"drop {', '.join(sorted(set(chosen) - {'fid'}))} or name a data set")
    common = {**s.protocol, "n_generated": len(s.x), "data_shape": list(s.x.shape[1:]),
              "training_data": f"{s.training['data']}@{s.training['data_split']}" if s.training else None}
    ctx = {"device": d.device, "inception_file": inception, "batch": batch, "is_main": d.is_main,
           "save_reference_stats": save_reference_stats}
    results = {}
    for name in chosen:
        out = _COMPUTE[name](s, ref, ctx)
        out["protocol"] = {"metric": name, **common, **out["protocol"]}
        results[name] = out
    env = {"fastdiffusion": fastdiffusion.__version__, "torch": torch.__version__, "device": str(d.device),
           "world_size": d.world_size}
    return {"results": results, "protocol": common, "environment": env, "warnings": _overlap_warnings(s, ref, chosen)}
