"""Gaussian data: the EDM family's exact denoiser and PF-ODE transport when the data are N(mu, Sigma).

With data x_0 ~ N(mu, Sigma) and the EDM-family noising x = x_0 + sigma n (every EDM-family process is sampled in
this normalisation through ``D(x, sigma)``), x ~ N(mu, Sigma + sigma^2 I), and with the eigenpairs Sigma u = lam u:

    D(x, sigma)  = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)               (the posterior mean E[x_0 | x])
    dx/dsigma    = (x - D(x, sigma)) / sigma = sigma (Sigma + sigma^2 I)^-1 (x - mu)           (EDM eq. 3, s = 1)
    x(sigma_b)   = mu + ((Sigma + sigma_b^2 I) (Sigma + sigma_a^2 I)^-1)^(1/2) (x(sigma_a) - mu)  (its exact flow)

Sigma is kept as a rank-k eigenbasis plus an isotropic rest, ``Sigma = U diag(lam) U^T + r (I - U U^T)``, so that
3x64x64 images need a (D, k) basis and never a (D, D) matrix; k = D is the full covariance (r unused).
``data.stats`` estimates them from data and finds them for a model. ``fastdiffusion.sample`` uses them for the analytic
first step (``afs``) and the ``teleport`` over the high-noise part; PSLD's closed forms (``processes.psld_gaussian``)
are built on the same eigendirection mixing (``mix``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError

DEFAULT_RANK = 256  # eigenpairs kept by default (all of them when D <= 256)
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
        """``mu + mix(x - mu)`` with the scalar blocks g = ``gain(var, sigma_a^2, sigma_b^2)`` per row, returned in
        x's dtype."""
        n = x.shape[0]
        self.check_shape(x.shape[1:])
        dtype = self.work_dtype(x.device)
        mean = self.on(x.device, dtype)[0]
        s2a, s2b = (torch.as_tensor(s, dtype=dtype, device=x.device).reshape(-1).expand(n)[:, None] ** 2
                    for s in (sigma_a, sigma_b))
        y = x.reshape(n, 1, -1).to(dtype) - mean
        out = mean + self.mix(y, lambda var: gain(var, s2a, s2b)[..., None, None])[:, 0]
        return out.reshape(x.shape).to(x.dtype)

    def mix(self, y: Tensor, blocks: Callable[[Tensor], Tensor]) -> Tensor:
        """``B(r) y + U ((B(lam) - B(r)) U^T y)``: y (n, P, D) (P values per pixel, e.g. PSLD's (x, m)) mixed along
        each eigendirection by the (n or 1, len(var), P, P) blocks ``blocks(var)`` of its variance; in y's dtype."""
        _, basis, lam = self.on(y.device, y.dtype)
        rest = blocks(torch.full((1,), self.residual, dtype=y.dtype, device=y.device))
        coef = (y @ basis).transpose(1, 2)[..., None]  # (n, k, P, 1)
        along = ((blocks(lam) - rest) @ coef)[..., 0].transpose(1, 2) @ basis.T
        return rest[:, 0] @ y + along

    @staticmethod
    def work_dtype(device: torch.device) -> torch.dtype:
        """float64, or float32 where the device has no float64 (MPS)."""
        return torch.float32 if device.type == "mps" else torch.float64

    def on(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, basis, eigenvalues) on ``device`` in ``dtype``, cached."""
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
        k = kept_rank(rank, d)
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


def kept_rank(rank: int | None, d: int) -> int:
    if rank is None:
        return min(d, DEFAULT_RANK)
    if not isinstance(rank, int) or rank < 1:
        raise UserError(f"rank must be a positive integer, got {rank!r}")
    return min(rank, d)
