"""Gaussian data: the EDM family's exact denoiser and PF-ODE transport when the data are N(mu, Sigma).

With data x_0 ~ N(mu, Sigma) and the EDM-family noising x = x_0 + sigma n (every EDM-family process is sampled in
this normalisation through ``D(x, sigma)``), x ~ N(mu, Sigma + sigma^2 I), and with the eigenpairs Sigma u = lam u:

    D(x, sigma)  = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)               (the posterior mean E[x_0 | x])
    dx/dsigma    = (x - D(x, sigma)) / sigma = sigma (Sigma + sigma^2 I)^-1 (x - mu)           (EDM eq. 3, s = 1)
    x(sigma_b)   = mu + ((Sigma + sigma_b^2 I) (Sigma + sigma_a^2 I)^-1)^(1/2) (x(sigma_a) - mu)  (its exact flow)

Sigma is kept as a rank-k eigenbasis plus an isotropic rest, ``Sigma = U diag(lam) U^T + r (I - U U^T)``, so that
3x64x64 images need a (D, k) basis and never a (D, D) matrix; k = D is the full covariance (r unused).
``compute_stats`` estimates (mu, U, lam, r) from data in the model's scale ([-1, 1] images, x = u8 / 127.5 - 1, as
training feeds them); ``resolve_data_stats`` finds them for a model (a file beside it, a named data set, or the run's
recorded training data, cached in the run directory). ``fastdiffusion.sample`` uses them for the analytic first step
(``afs``) and the ``teleport`` over the high-noise part.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError

STATS_FILE = "data_stats.safetensors"  # beside a model / in its run directory
DEFAULT_RANK = 256  # eigenpairs kept by default (all of them when D <= 256)
MAX_DENSE = 12288  # largest D whose (D, D) covariance is accumulated and eigendecomposed (3x64x64)
_FORMAT = 1


@dataclass(eq=False)
class GaussianDataStats:
    """Mean ``mean`` (D,), orthonormal ``basis`` U (D, k), eigenvalues ``eigenvalues`` lam (k,), residual variance
    ``residual`` r of the rest, all float64; ``data_shape`` of one sample, and where they came from (``info``)."""

    mean: Tensor
    basis: Tensor
    eigenvalues: Tensor
    residual: float
    data_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64).detach().cpu().reshape(-1)
        self.basis = torch.as_tensor(self.basis, dtype=torch.float64).detach().cpu()
        self.eigenvalues = torch.as_tensor(self.eigenvalues, dtype=torch.float64).detach().cpu().reshape(-1)
        self.residual = float(self.residual)
        self.data_shape = tuple(int(s) for s in self.data_shape)
        d, k = self.dim, len(self.eigenvalues)
        if math.prod(self.data_shape) != d or self.basis.shape != (d, k) or not 1 <= k <= d:
            raise UserError(f"data statistics: inconsistent shapes (data {self.data_shape}, mean {d}, basis "
                            f"{tuple(self.basis.shape)}, {k} eigenvalues)")
        values = torch.cat([self.mean, self.eigenvalues, torch.tensor([self.residual], dtype=torch.float64)])
        if not bool(torch.isfinite(values).all()) or bool((self.eigenvalues < 0).any()) or self.residual < 0:
            raise UserError("data statistics: the mean, eigenvalues and residual variance must be finite, variances "
                            ">= 0")

    @property
    def dim(self) -> int:
        """D, the number of values in one sample."""
        return int(self.mean.numel())

    @property
    def rank(self) -> int:
        """k, the number of eigenpairs kept."""
        return int(self.eigenvalues.numel())

    def covariance(self) -> Tensor:
        """Sigma = U diag(lam) U^T + r (I - U U^T), (D, D) float64 (for small D: tests and checks)."""
        u = self.basis
        return (u * (self.eigenvalues - self.residual)) @ u.T + self.residual * torch.eye(self.dim, dtype=torch.float64)

    def describe(self) -> dict:
        """What a protocol records of them: dim, rank, residual variance, sample count and source."""
        return {"dim": self.dim, "rank": self.rank, "residual": self.residual, **self.info}

    def check_shape(self, shape: tuple[int, ...] | torch.Size) -> None:
        """A one-line UserError unless one sample of ``shape`` has this data's D values."""
        if math.prod(tuple(shape)) != self.dim:
            raise UserError(f"the data statistics are for samples of shape {self.data_shape} ({self.dim} values), "
                            f"the model's are {tuple(shape)}: compute them from the model's data (--data-stats DATA)")

    # -- the closed forms ----------------------------------------------------------------------------------------
    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``D(x, sigma) = mu + U diag(lam/(lam+sigma^2)) U^T (x-mu) + r/(r+sigma^2) (I-UU^T)(x-mu)``."""
        def gains(lam: Tensor, s2: Tensor) -> Tensor:
            total = lam + s2
            return torch.where(total > 0, lam / total.clamp_min(1e-300), torch.ones_like(total))

        return self._apply(x, sigma, sigma, lambda lam, s2a, s2b: gains(lam, s2a))

    def transport(self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
        """Exact PF-ODE flow ``x_b = mu + U diag(sqrt((lam+sb^2)/(lam+sa^2))) U^T (x_a-mu)
        + sqrt((r+sb^2)/(r+sa^2)) (I-UU^T)(x_a-mu)`` from sigma_a = ``sigma_from`` to sigma_b = ``sigma_to``."""
        return self._apply(x, sigma_from, sigma_to, lambda lam, s2a, s2b: ((lam + s2b) / (lam + s2a)).sqrt())

    def _apply(self, x: Tensor, sigma_a: Tensor | float, sigma_b: Tensor | float, gain) -> Tensor:
        """``mu + g(r) (x - mu) + U ((g(lam) - g(r)) * U^T (x - mu))`` per row, g = ``gain(var, sigma_a^2,
        sigma_b^2)``, in float64 (float32 where the device has no float64), returned in x's dtype."""
        n = x.shape[0]
        self.check_shape(x.shape[1:])
        dtype = torch.float32 if x.device.type == "mps" else torch.float64
        mean, basis, lam = self._on(x.device, dtype)
        s2a, s2b = (torch.as_tensor(s, dtype=dtype, device=x.device).reshape(-1).expand(n)[:, None] ** 2
                    for s in (sigma_a, sigma_b))
        y = x.reshape(n, -1).to(dtype) - mean
        rest = torch.full((1, 1), self.residual, dtype=dtype, device=x.device)
        g_rest = gain(rest, s2a, s2b)  # (n, 1)
        out = mean + g_rest * y + ((y @ basis) * (gain(lam[None], s2a, s2b) - g_rest)) @ basis.T
        return out.reshape(x.shape).to(x.dtype)

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device, dtype) for t in (self.mean, self.basis, self.eigenvalues))
        return self._cache[key]

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """A small safetensors file (float64 mean, basis, eigenvalues; JSON metadata), written atomically."""
        from safetensors.torch import save as safetensors_bytes

        from ..checkpoint import META_KEY, atomic_write_bytes

        meta = {"format": _FORMAT, "kind": "gaussian-data-stats", "residual": self.residual,
                "data_shape": list(self.data_shape), "info": self.info}
        tensors = {"mean": self.mean.contiguous(), "basis": self.basis.contiguous(),
                   "eigenvalues": self.eigenvalues.contiguous()}
        atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata={META_KEY: json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> GaussianDataStats:
        """Statistics saved by ``save``; a one-line UserError for anything else."""
        from ..checkpoint import read_weights

        tensors, meta = read_weights(Path(path).expanduser())
        if meta.get("kind") != "gaussian-data-stats" or not {"mean", "basis", "eigenvalues"} <= set(tensors):
            raise UserError(f"{path}: not a data statistics file (write one with compute_stats(...).save)")
        from ..checkpoint import sha256

        info = {**meta.get("info", {}), "file": str(path), "sha256": sha256(Path(path).expanduser())}
        return cls(tensors["mean"], tensors["basis"], tensors["eigenvalues"], meta["residual"],
                   tuple(meta["data_shape"]), info)

    # -- other constructors --------------------------------------------------------------------------------------
    @classmethod
    def from_covariance(cls, mean: Tensor, cov: Tensor, rank: int | None = None,
                        data_shape: tuple[int, ...] | None = None, info: dict | None = None) -> GaussianDataStats:
        """The top-``rank`` eigenpairs of a (D, D) covariance (default all), ``r`` = mean of the other eigenvalues."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.numel()
        k = _rank(rank, d)
        lam, vec = torch.linalg.eigh((cov + cov.T) / 2)
        lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
        residual = float(lam[k:].mean()) if k < d else 0.0
        return cls(mean, vec[:, :k], lam[:k], residual, data_shape or (d,), dict(info or {}))

    @classmethod
    def from_mixture(cls, mixture: Any, rank: int | None = None) -> GaussianDataStats:
        """A ``GaussianMixture``'s exact moments: m = sum w_k mu_k, Sigma = sum w_k (diag v_k + mu_k mu_k^T) - m m^T."""
        w, mu, var = mixture.weights, mixture.means, mixture.variances
        m = mixture.mean()
        cov = torch.diag(w @ var) + (mu.T * w) @ mu - torch.outer(m, m)
        return cls.from_covariance(m, cov, rank, info={"source": f"exact moments of {mixture!r}"})


def _rank(rank: int | None, d: int) -> int:
    if rank is None:
        return min(d, DEFAULT_RANK)
    if not isinstance(rank, int) or rank < 1:
        raise UserError(f"rank must be a positive integer, got {rank!r}")
    return min(rank, d)


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
    k = _rank(rank, d)
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
    from ..data import DIGITS_SETS, load_dataset

    ds = load_dataset(spec, split=split)
    if ds.kind == "image" and data_shape is not None and tuple(ds.shape) != tuple(data_shape):
        name = "digits" if spec.strip().lower() in DIGITS_SETS else spec
        ds = load_dataset(name, resolution=int(data_shape[-1]), split=split)
    return compute_stats(_DatasetBatches(ds.samples), rank, flip=flip and ds.kind == "image",
                         info={"source": f"{spec}@{split}" + (" with horizontal flips" if flip else "")})


def _parse_data(spec: str) -> tuple[str, str]:
    from ..data.images import SPLITS

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
