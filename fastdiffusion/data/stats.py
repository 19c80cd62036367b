"""The data's Gaussian statistics for the analytic first step and teleport (``processes.gaussian_data``): estimated
from samples (``compute_stats``), from a data set (``stats_from_dataset``), and found for a model
(``resolve_data_stats``: a file beside it, a named data set, or the run's recorded training data, cached in the run
directory)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..processes.gaussian_data import GaussianDataStats, kept_rank

STATS_FILE = "data_stats.safetensors"  # beside a model / in its run directory
MAX_DENSE = 12288  # largest D whose (D, D) covariance is accumulated and eigendecomposed (3x64x64)


# ---------------------------------------------------------------------------------------------- estimation


def _as_float(batch: Tensor, flip: bool, device: torch.device | None) -> Tensor:
    """(b, D) float64 rows of a batch: uint8 images become u8 / 127.5 - 1 (the training scale); ``flip`` appends the
    horizontally mirrored images (for runs trained with --xflip)."""
    if not isinstance(batch, Tensor):
        raise UserError(f"compute_stats: expected tensors (a batch (N, ...) or an iterable of them), got "
                        f"{type(batch).__name__}")
    x = batch.to(device) if device is not None else batch
    x = x.double() / 127.5 - 1 if x.dtype == torch.uint8 else x.double()
    if flip:
        if x.ndim != 4:
            raise UserError("compute_stats: flip applies to image batches (N, C, H, W)")
        x = torch.cat([x, x.flip(-1)])
    return x.reshape(x.shape[0], -1)


def compute_stats(data: Tensor | Iterable[Tensor], rank: int | None = None, *, flip: bool = False,
                  max_dense: int = MAX_DENSE, power_iters: int = 4, oversample: int = 32,
                  device: str | torch.device | None = None, info: dict | None = None) -> GaussianDataStats:
    """Mean and top-``rank`` covariance eigenpairs of ``data`` (a tensor (N, ...) or an iterable of batches; uint8
    images are scaled to [-1, 1]), covariance = (1/N) sum (x - mu)(x - mu)^T (the data's own, not the unbiased one).

    D <= ``max_dense``: the (D, D) covariance is accumulated in float64 (about a pilot mean, against cancellation) and
    eigendecomposed exactly (``torch.linalg.eigh``). Larger D: randomized subspace iteration (Halko et al. 2011) with
    ``rank + oversample`` vectors and ``power_iters`` passes, then Rayleigh-Ritz; it reads the data 3 + power_iters
    times, so ``data`` must be a tensor or a re-iterable collection. ``r`` = (trace - sum of kept lam) / (D - k).
    """
    dev = None if device is None else torch.device(device)
    batches: Iterable[Tensor] = [data] if isinstance(data, Tensor) else data
    one_pass = iter(batches) is batches  # an iterator: it can be read only once
    n, d, shape, pilot, total, outer, trace = 0, 0, (), None, None, None, 0.0
    for batch in batches:  # pass 1: count, mean, and the dense second moment or the trace
        x = _as_float(batch, flip, dev)
        if pilot is None:
            shape, d = tuple(batch.shape[1:]), x.shape[1]
            if d > max_dense and one_pass:
                raise UserError(f"compute_stats: D = {d} > {max_dense} needs several passes over the data; pass a "
                                f"tensor or a re-iterable collection of batches, not an iterator")
            pilot = x.mean(0)
            total = torch.zeros_like(pilot)
            outer = torch.zeros(d, d, dtype=torch.float64, device=x.device) if d <= max_dense else None
        elif x.shape[1] != d:
            raise UserError(f"compute_stats: a batch of samples with {x.shape[1]} values, the first had {d}")
        y = x - pilot
        n += x.shape[0]
        total += y.sum(0)
        if outer is not None:
            outer.addmm_(y.T, y)
        else:
            trace += float(y.square().sum())
    if n < 2:
        raise UserError(f"compute_stats: need at least 2 samples, got {n}")
    shift = total / n
    mean = pilot + shift
    k = kept_rank(rank, d)
    meta = {"n": n, "flip": flip, **(info or {})}
    if outer is not None:
        cov = outer / n - torch.outer(shift, shift)
        return GaussianDataStats.from_covariance(mean.cpu(), cov.cpu(), k, shape,
                                                 {**meta, "method": "dense float64 covariance, torch.linalg.eigh"})
    trace = trace / n - float(shift.square().sum())

    def cov_times(q: Tensor) -> Tensor:  # C q = (1/N) sum (x - mu)(x - mu)^T q, one pass
        acc = torch.zeros_like(q)
        for batch in batches:
            y = _as_float(batch, flip, dev) - mean
            acc.addmm_(y.T, y @ q)
        return acc / n

    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(d, min(d, k + oversample), generator=g, dtype=torch.float64).to(mean.device))[0]
    for _ in range(power_iters + 1):
        q = torch.linalg.qr(cov_times(q))[0]
    lam, vec = torch.linalg.eigh(q.T @ cov_times(q))
    lam, vec = lam.flip(0)[:k].clamp_min(0), (q @ vec.flip(1))[:, :k]
    residual = max(trace - float(lam.sum()), 0.0) / (d - k) if k < d else 0.0
    method = f"randomized subspace iteration ({q.shape[1]} vectors, {power_iters} power passes)"
    return GaussianDataStats(mean.cpu(), vec.cpu(), lam.cpu(), residual, shape, {**meta, "method": method})


# --------------------------------------------------------------------------------- where statistics come from


class _DatasetBatches:
    """A ``fastdiffusion.data.Dataset``'s samples as stored, in chunks (re-iterable, for several passes)."""

    def __init__(self, samples: Any, chunk: int = 1024) -> None:
        self.samples, self.chunk = samples, chunk

    def __iter__(self):
        for lo in range(0, len(self.samples), self.chunk):
            got = self.samples.__getitems__(list(range(lo, min(lo + self.chunk, len(self.samples)))))
            if got.error is not None:
                raise UserError(got.error)
            yield got.x


def stats_from_dataset(spec: str, split: str = "all", data_shape: tuple[int, ...] | None = None, *,
                       rank: int | None = None, flip: bool = False) -> GaussianDataStats:
    """``compute_stats`` of a data set (``fastdiffusion.data.load_dataset`` spec and split), images read at the
    resolution of ``data_shape`` when it differs from the stored one."""
    from . import DIGITS_SETS, load_dataset

    ds = load_dataset(spec, split=split)
    if ds.kind == "image" and data_shape is not None and tuple(ds.shape) != tuple(data_shape):
        name = "digits" if spec.strip().lower() in DIGITS_SETS else spec
        ds = load_dataset(name, resolution=int(data_shape[-1]), split=split)
    return compute_stats(_DatasetBatches(ds.samples), rank, flip=flip and ds.kind == "image",
                         info={"source": f"{spec}@{split}" + (" with horizontal flips" if flip else "")})


def _parse_data(spec: str) -> tuple[str, str]:
    from .images import SPLITS

    data, at, split = spec.rpartition("@")
    return (data, split) if at and data and split in SPLITS else (spec, "all")


def resolve_data_stats(model_path: str | Path | None, spec: str | Path | GaussianDataStats | None = None,
                       data_shape: tuple[int, ...] | None = None) -> GaussianDataStats:
    """The data statistics for a model: ``spec`` = FILE (a .safetensors from ``save``) or DATA[@SPLIT] (computed now;
    split default all) when given; else ``data_stats.safetensors`` beside the model (its directory, checkpoint or run
    directory); else computed from the run's recorded training data (config.json's data, data_split, xflip) and cached
    there as ``data_stats.safetensors`` (atomic write)."""
    if isinstance(spec, GaussianDataStats):
        stats = spec
    elif spec is not None:
        p = Path(spec).expanduser()
        if p.suffix.lower() == ".safetensors":
            stats = GaussianDataStats.load(p)
        else:
            data, split = _parse_data(str(spec))
            stats = stats_from_dataset(data, split, data_shape)
    else:
        if model_path is None:
            raise UserError("--teleport / --afs need the data's statistics: pass data_stats (a GaussianDataStats, a "
                            "statistics file or a data set)")
        path = Path(model_path).expanduser()
        places = [path.parent] if path.is_file() else []
        places += [d for d in [path, *path.parents][:3] if d.is_dir()]
        found = next((d / STATS_FILE for d in places if (d / STATS_FILE).is_file()), None)
        from ..checkpoint import find_run_config

        run = find_run_config(path)
        if found is not None:
            stats = GaussianDataStats.load(found)
        elif run is None or "data" not in run[1]:
            raise UserError(f"{path}: no {STATS_FILE} beside the model and no run config.json naming its training "
                            f"data: give --data-stats DATA[@SPLIT] or a statistics FILE")
        else:
            run_dir, cfg = run
            stats = stats_from_dataset(str(cfg["data"]), str(cfg.get("data_split", "all")), data_shape,
                                       flip=bool(cfg.get("xflip", False)))
            try:
                stats.save(run_dir / STATS_FILE)
                stats.info["file"] = str(run_dir / STATS_FILE)
            except OSError as e:  # a read-only run directory: use them uncached
                print(f"fastdiffusion: warning: could not cache the data statistics in {run_dir} ({e})",
                      file=sys.stderr)
    if data_shape is not None:
        stats.check_shape(data_shape)
    return stats
