"""φ-functions of exponential integrators (Hochbruck & Ostermann 2010, eq. 2.10), shared by the PSLD kernel and the
multistep samplers' weights."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Below this |x| the power series is used: the recursion cancels there.
SERIES_BELOW = 0.5


def phi(j: int, x: Tensor | float) -> Tensor:
    """φ_j(x) = ∫₀¹ e^{(1−θ)x} θ^{j−1}/(j−1)! dθ = Σ_i x^i/(i+j)! (j ≥ 1), float64; the recursion
    φ_1 = expm1(x)/x, φ_j = (φ_{j−1} − 1/(j−1)!)/x above ``SERIES_BELOW``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    small = x.abs() < SERIES_BELOW
    xs = torch.where(small, x, torch.zeros_like(x))
    series, term = torch.zeros_like(x), torch.full_like(x, 1 / math.factorial(j))
    for i in range(20):
        series = series + term
        term = term * xs / (i + j + 1)
    xl = torch.where(small, torch.ones_like(x), x)
    out = torch.expm1(xl) / xl
    for i in range(2, j + 1):
        out = (out - 1 / math.factorial(i - 1)) / xl
    return torch.where(small, series, out)
