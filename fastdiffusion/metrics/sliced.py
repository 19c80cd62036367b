"""Sliced Wasserstein-2 distance between two empirical distributions (sample sets of any sizes).

    SW₂(x, y) = ( E_θ W₂²(θᵀx, θᵀy) )^½,   θ uniform on the unit sphere S^{D−1}

estimated with `n_projections` directions θ_l = g_l / |g_l|, g_l ~ N(0, I_D). Each 1-D term is exact for the
empirical measures (uniform weights 1/n and 1/m): with quantile functions Q_x, Q_y (sorted projections),

    W₂²(a, b) = ∫₀¹ (Q_a(u) − Q_b(u))² du,

integrated piecewise over the merged breakpoints {i/n} ∪ {j/m} (for n = m this is mean (a_(i) − b_(i))²).
Computed in float64 on x's device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["sliced_wasserstein", "wasserstein2_1d_squared"]


def wasserstein2_1d_squared(a_sorted: Tensor, b_sorted: Tensor) -> Tensor:
    """Exact W₂² between 1-D empirical measures, rowwise: a_sorted (L, n), b_sorted (L, m), sorted along dim 1."""
    n, m = a_sorted.shape[1], b_sorted.shape[1]
    if n == m:
        return (a_sorted - b_sorted).square().mean(1)
    dev = a_sorted.device
    u = torch.cat([torch.arange(1, n + 1, dtype=torch.float64, device=dev) / n,
                   torch.arange(1, m + 1, dtype=torch.float64, device=dev) / m])
    u = torch.unique(u)  # sorted breakpoints; the last is 1
    width = torch.diff(u, prepend=u.new_zeros(1))
    mid = u - 0.5 * width
    ia = torch.floor(mid * n).long().clamp_(0, n - 1)
    ib = torch.floor(mid * m).long().clamp_(0, m - 1)
    return ((a_sorted[:, ia] - b_sorted[:, ib]).square() * width).sum(1)


def _sort_rows(t: Tensor) -> Tensor:
    """Sort each row; on the CPU through numpy, several times faster than torch's sort for long rows."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.sort(t.numpy(), axis=1))
    return t.sort(dim=1).values


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """SW₂(x, y) (the square root of the mean of squared 1-D W₂ over random directions; see the module docstring).

    Args:
        x: (n, ...) samples; flattened to (n, D).
        y: (m, ...) samples with the same D.
        n_projections: number of random directions L.
        generator: CPU generator the directions are drawn from (default: a fresh one seeded with 0).
    """
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] < 1 or y.shape[0] < 1:
        raise UserError(f"sliced Wasserstein: need non-empty sample sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    a = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    b = y.detach().reshape(y.shape[0], -1).to(device=a.device, dtype=torch.float64)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"sliced Wasserstein: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    if n_projections < 1:
        raise UserError(f"sliced Wasserstein: n_projections must be >= 1, got {n_projections}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(a.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(a.device)
    pa, pb = _sort_rows((a @ theta).T), _sort_rows((b @ theta).T)
    return float(wasserstein2_1d_squared(pa, pb).mean().sqrt())
