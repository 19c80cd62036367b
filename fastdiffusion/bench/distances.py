"""What a benchmark run is scored by: endpoint error, sliced W2 and MMD to a Gaussian mixture (docs/benchmarks.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.gmm import GaussianMixture
from ..metrics.sliced import sliced_wasserstein

N_PROJECTIONS = 256


def endpoint_error(x: Tensor, exact: Tensor) -> float:
    """Mean over samples of ``||x - x_exact||_2``."""
    return float((x - exact).reshape(len(x), -1).norm(dim=1).mean())


def sw2(x: Tensor, data: Tensor, seed: int) -> float:
    """Sliced W2 between ``x`` and ``data`` over ``N_PROJECTIONS`` directions drawn from ``seed``."""
    return sliced_wasserstein(x, data, n_projections=N_PROJECTIONS, generator=torch.Generator().manual_seed(seed))


def _expected_kernel(mix: GaussianMixture, x: Tensor, ell2: float) -> Tensor:
    """E_{y~p} exp(−‖x − y‖²/2ℓ²) = Σ_k w_k Π_d (ℓ²/(ℓ² + v_kd))^{½} exp(−(x_d − μ_kd)²/2(ℓ² + v_kd)), per row."""
    mu, var, log_w = (v.to(x.device) for v in (mix.means, mix.variances, mix.weights.log()))
    s = var + ell2
    inv = 1 / s
    quad = (x * x) @ inv.T - 2 * x @ (mu * inv).T + (mu**2 * inv).sum(1)
    log_c = 0.5 * (math.log(ell2) * mix.dim - s.log().sum(1))
    return (log_w + log_c - 0.5 * quad).exp().sum(1)


def _data_kernel(mix: GaussianMixture, ell2: float) -> float:
    """E_{y,y'~p} k(y, y') = Σ_{k,l} w_k w_l Π_d (ℓ²/s)^{½} exp(−(μ_kd − μ_ld)²/2s), s = ℓ² + v_kd + v_ld."""
    s = mix.variances[:, None] + mix.variances[None] + ell2  # (K, K, D)
    d2 = (mix.means[:, None] - mix.means[None]) ** 2
    log_t = 0.5 * (math.log(ell2) * mix.dim - s.log().sum(-1)) - 0.5 * (d2 / s).sum(-1)
    return float((mix.weights[:, None] * mix.weights[None] * log_t.exp()).sum())


def _sample_kernel(x: Tensor, ell2: float, chunk: int = 2048) -> float:
    """Unbiased (1/n(n−1)) Σ_{i≠j} exp(−‖x_i − x_j‖²/2ℓ²)."""
    n, sq, total = len(x), (x * x).sum(1), 0.0
    for lo in range(0, n, chunk):
        d2 = (sq[lo:lo + chunk, None] + sq[None] - 2 * x[lo:lo + chunk] @ x.T).clamp_min(0)
        total += float((-d2 / (2 * ell2)).exp().sum())
    return (total - n) / (n * (n - 1))


def mmd2(x: Tensor, mix: GaussianMixture) -> float:
    """Unbiased MMD² between samples x (n, D) and the mixture, kernel ½ Σ_{ℓ ∈ {ℓ₀, 4ℓ₀}} exp(−‖·‖²/2ℓ²),
    ℓ₀² = D · mean component variance."""
    x = x.reshape(len(x), -1).double()
    ell2 = mix.dim * float(mix.variances.mean())
    out = 0.0
    for scale in (1.0, 16.0):
        e2 = ell2 * scale
        out += 0.5 * (_sample_kernel(x, e2) - 2 * float(_expected_kernel(mix, x, e2).mean()) + _data_kernel(mix, e2))
    return out


def mmd(x: Tensor, mix: GaussianMixture) -> float:
    """√max(MMD², 0) between samples x and the mixture."""
    return math.sqrt(max(mmd2(x, mix), 0.0))
