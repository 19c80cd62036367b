"""Fréchet distance between Gaussians fitted to feature sets, from float64 streaming statistics.

For N(μ1, Σ1) and N(μ2, Σ2) (Fréchet / Wasserstein-2 distance squared, the quantity FID reports):

    FD = |μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½

`tr (Σ1^½ Σ2 Σ1^½)^½` equals the `tr (Σ1 Σ2)^½` of the usual statement (Σ1 Σ2 and Σ1^½ Σ2 Σ1^½ are similar), but
the symmetric form is computed with two symmetric eigen-decompositions: Σ1^½ = V diag(√λ⁺) Vᵀ, then the
eigenvalues ν of the PSD matrix Σ1^½ Σ2 Σ1^½ give tr(...)^½ = Σ √ν⁺ (x⁺ = max(x, 0) clips round-off). No complex
values, no `sqrtm` iteration, and singular (rank-deficient) covariances are fine.

Statistics: `FeatureStats` accumulates n, Σ f and Σ f fᵀ in float64 (on the features' device) and merges across
torchrun ranks by one `all_reduce(SUM)`; μ = Σ f / n, Σ = (Σ f fᵀ − n μ μᵀ) / (n − 1) (unbiased, like `np.cov`).
`GaussianStats` holds (μ, Σ, n) and round-trips through an .npz with arrays `mu`, `sigma`, `n` (files holding only
`mu` and `sigma`, as written by EDM's and pytorch-fid's tools, load too, with n = 0 meaning unknown).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write_bytes
from ..errors import UserError

__all__ = ["FeatureStats", "GaussianStats", "frechet_distance", "trace_sqrt_product"]


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1^½ Σ2 Σ1^½)^½ for symmetric PSD Σ1, Σ2, by two symmetric eigen-decompositions in float64."""
    eigval, vec = np.linalg.eigh(_sym(np.asarray(sigma1, dtype=np.float64)))
    root1 = (vec * np.sqrt(np.clip(eigval, 0.0, None))) @ vec.T
    inner = _sym(root1 @ np.asarray(sigma2, dtype=np.float64) @ root1)
    nu = np.linalg.eigvalsh(inner)
    return float(np.sqrt(np.clip(nu, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD = |μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½, all in float64 (see the module docstring).

    Accepts numpy arrays or tensors; μ of shape (D,), Σ of shape (D, D). The result is clipped at 0 (it can dip
    a few ulps below for identical inputs).
    """
    m1, m2 = (np.asarray(_np(m), dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(_np(s), dtype=np.float64)) for s in (sigma1, sigma2))
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise UserError(
            f"Fréchet distance: shapes do not match: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    for name, a in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise UserError(f"Fréchet distance: {name} has NaN or infinite entries")
    diff = m1 - m2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return max(float(value), 0.0)


def _np(a: object) -> object:
    return a.detach().double().cpu().numpy() if isinstance(a, Tensor) else a


@dataclass
class GaussianStats:
    """Mean μ (D,), covariance Σ (D, D) in float64, the sample count n, and free-form JSON metadata."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    meta: dict = field(default_factory=dict)

    def frechet_distance(self, other: GaussianStats) -> float:
        """FD between N(self.mu, self.sigma) and N(other.mu, other.sigma)."""
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path: str | Path) -> Path:
        """Write arrays mu, sigma (float64), n (int64) and meta (JSON string) to `path` (.npz), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), meta=np.array(json.dumps(self.meta)))
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> GaussianStats:
        """Read an .npz holding `mu` and `sigma` (and optionally `n`, `meta`)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: no such statistics file")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "mu" not in z.files or "sigma" not in z.files:
                    raise UserError(f"{path}: not a statistics file (it holds {list(z.files)}, not mu and sigma)")
                mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
                n = int(z["n"]) if "n" in z.files else 0
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"{path}: cannot read statistics ({type(err).__name__}: {err})") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
        return cls(mu, sigma, n, meta)

    @staticmethod
    def is_stats_file(path: str | Path) -> bool:
        """True when `path` is an .npz holding arrays named mu and sigma."""
        p = Path(path).expanduser()
        if p.suffix.lower() != ".npz" or not p.is_file():
            return False
        try:
            with np.load(p, allow_pickle=False) as z:
                return "mu" in z.files and "sigma" in z.files
        except Exception:
            return False


class FeatureStats:
    """Streaming float64 sums for the mean and covariance of feature vectors: n, s = Σ f, S = Σ f fᵀ.

    `update` works on the features' device (CPU or GPU); `all_reduce` sums the three across torchrun ranks so every
    rank then holds the statistics of all features. μ = s / n, Σ = (S − n μ μᵀ) / (n − 1).
    """

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.dim = dim
        self._sum: Tensor | None = None
        self._outer: Tensor | None = None

    def update(self, features: Tensor) -> FeatureStats:
        """Add a batch of features (N, D) (any float dtype; accumulated in float64)."""
        f = features.detach().reshape(features.shape[0], -1).to(torch.float64)
        if self.dim is None:
            self.dim = f.shape[1]
        if f.shape[1] != self.dim:
            raise UserError(f"FeatureStats: features have {f.shape[1]} dimensions, expected {self.dim}")
        if self._sum is None:
            self._sum = torch.zeros(self.dim, dtype=torch.float64, device=f.device)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=f.device)
        f = f.to(self._sum.device)
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.n += f.shape[0]
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's sums into this one (e.g. statistics computed elsewhere)."""
        if other.n == 0:
            return self
        if self._sum is None:
            self.dim = other.dim
            self._sum, self._outer = other._sum.clone(), other._outer.clone()
        else:
            if other.dim != self.dim:
                raise UserError(f"FeatureStats: cannot merge {other.dim}-d statistics into {self.dim}-d ones")
            self._sum += other._sum.to(self._sum.device)
            self._outer += other._outer.to(self._outer.device)
        self.n += other.n
        return self

    def all_reduce(self, device: torch.device | str | None = None) -> FeatureStats:
        """Sum n, Σ f and Σ f fᵀ over all torchrun ranks (a no-op without an initialised process group).

        Every rank must call it and have seen at least one batch or know `dim`. `device` is where the reduction runs
        (NCCL needs CUDA tensors); default: where the sums already are.
        """
        import torch.distributed as dist

        from ..training.distributed import rank_world

        if rank_world()[1] == 1:
            return self
        if self.dim is None:
            raise UserError("FeatureStats.all_reduce: this rank saw no features and does not know the dimension")
        dev = torch.device(device) if device is not None else (self._sum.device if self._sum is not None else "cpu")
        packed = torch.zeros(1 + self.dim + self.dim * self.dim, dtype=torch.float64, device=dev)
        if self._sum is not None:
            packed[0] = self.n
            packed[1 : 1 + self.dim] = self._sum.to(dev)
            packed[1 + self.dim :] = self._outer.to(dev).reshape(-1)
        dist.all_reduce(packed)
        self.n = int(round(float(packed[0])))
        self._sum = packed[1 : 1 + self.dim].clone()
        self._outer = packed[1 + self.dim :].reshape(self.dim, self.dim).clone()
        return self

    @property
    def mu(self) -> np.ndarray:
        """μ = Σ f / n, float64 (D,)."""
        self._need(1)
        return (self._sum / self.n).cpu().numpy()

    @property
    def sigma(self) -> np.ndarray:
        """Σ = (Σ f fᵀ − n μ μᵀ) / (n − 1), float64 (D, D), symmetrised."""
        self._need(2)
        mu = self._sum / self.n
        cov = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return _sym(cov.cpu().numpy())

    def stats(self, **meta: object) -> GaussianStats:
        """The fitted Gaussian as `GaussianStats` (with `meta` attached)."""
        return GaussianStats(self.mu, self.sigma, self.n, dict(meta))

    def _need(self, n: int) -> None:
        if self.n < n:
            raise UserError(f"FeatureStats: need at least {n} feature vectors, have {self.n}")
