"""PSLD on Gaussian data x_0 ~ N(mu, Sigma): the exact ε and the exact PF-ODE flow (docs/samplers.md, "PSLD on
Gaussian data").

Along an eigenvector of Sigma with variance v, each (x, m) pair's projection is 2-D Gaussian with mean a_t (u·mu),
a_t = (a_x, a_m) the first column of the kernel mean matrix (m_0 has mean 0), and covariance
C_t(v) = v a_t a_tᵀ + Σ_t (the HSM kernel's). With y = z − a_t mu per pair:

    ε*(z, t) = L_tᵀ C_t(v)⁻¹ y                           (ε = −L_tᵀ ∇log p_t)
    dy/dt    = (F(t) + K(t) L_tᵀ C_t(v)⁻¹) y             (the centred PF-ODE dz/dt = F z + K ε; K L_tᵀ = ½ G Gᵀ)

The flow's 2×2 transition matrices are integrated once per variance (float64 DOP853 in ln t, independent of the batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .gaussian_data import GaussianDataStats
from .psld import PSLD, inv2

FLOW_RTOL = 1e-10  # the transition matrices' tolerance: far below any sampler's error
MAX_CACHED_FLOWS = 32
_FLOWS: dict[tuple, Tensor] = {}


def _times(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()


def _pairs(stats: GaussianDataStats, z: Tensor) -> Tensor:
    """z (N, 2C, ...) as its (x, m) pairs (N, 2, D) in the statistics' working dtype."""
    stats.check_shape((z.shape[1] // 2, *z.shape[2:]))
    return z.reshape(z.shape[0], 2, -1).to(stats.work_dtype(z.device))


def _mean(process: PSLD, stats: GaussianDataStats, t: Tensor, like: Tensor) -> Tensor:
    """E[z_t] = a_t mu per pair, (1 or N, 2, D) for times ``t`` (1 or N,), on ``like``'s device and dtype."""
    mu = stats.on(like.device, like.dtype)[0]
    return process.kernel_mean_matrix(t)[..., :, 0].to(like)[:, :, None] * mu


def eps_blocks(process: PSLD, t: Tensor, variances: Tensor) -> Tensor:
    """E_t(v) = L_tᵀ C_t(v)⁻¹, (len(t), len(v), 2, 2) float64: ε* = E_t(v) y along a direction of variance v."""
    t, v = _times(t), variances.detach().double().cpu().reshape(-1)
    a = process.kernel_mean_matrix(t)[..., :, 0]
    c = v[None, :, None, None] * (a[:, None, :, None] * a[:, None, None, :]) + process.kernel_cov(t)[:, None]
    return process.kernel_chol(t).transpose(-1, -2)[:, None] @ inv2(c)


def gaussian_eps(process: PSLD, stats: GaussianDataStats, z: Tensor, t: Tensor | float) -> Tensor:
    """ε*(z, t) = E_t(v) (z − a_t mu) along each eigendirection; z (N, 2C, ...), t scalar or (N,)."""
    t = _times(t)
    pairs = _pairs(stats, z)
    y = pairs - _mean(process, stats, t, pairs)
    return stats.mix(y, lambda var: eps_blocks(process, t, var).to(y)).reshape(z.shape).to(z.dtype)


def transition_matrices(process: PSLD, variances: Tensor, t_from: float, t_to: float) -> Tensor:
    """Φ(v), (len(v), 2, 2) float64: y(t_to) = Φ(v) y(t_from) under dy/dt = (F(t) + K(t) E_t(v)) y; cached, as
    every batch of a run and every run of a fit moves the same way."""
    v = variances.detach().double().cpu().reshape(-1)
    key = (tuple(sorted(process.config().items())), v.numpy().tobytes(), float(t_from), float(t_to))
    if key not in _FLOWS:
        if len(_FLOWS) >= MAX_CACHED_FLOWS:
            _FLOWS.clear()
        _FLOWS[key] = _integrate(process, v, float(t_from), float(t_to))
    return _FLOWS[key]


def _integrate(process: PSLD, v: Tensor, t_from: float, t_to: float) -> Tensor:
    from scipy.integrate import solve_ivp  # here, not above: every sampling run imports this module, scipy loads slowly

    k = v.shape[0]

    def rhs(u: float, flat: np.ndarray) -> np.ndarray:
        t = torch.tensor(math.exp(u), dtype=torch.float64)
        drift = process.drift_matrix(t) + process.eps_matrix(t) @ eps_blocks(process, t, v)[0]  # F + K E_t(v)
        return (math.exp(u) * drift @ torch.from_numpy(flat).reshape(k, 2, 2)).reshape(-1).numpy()

    start = np.tile(np.eye(2), (k, 1, 1)).reshape(-1)
    sol = solve_ivp(rhs, (math.log(t_from), math.log(t_to)), start, method="DOP853", rtol=FLOW_RTOL,
                    atol=FLOW_RTOL)
    if not sol.success:
        raise RuntimeError(f"the Gaussian PSLD flow from t={t_from:g} to t={t_to:g} failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(k, 2, 2)


def gaussian_transport(process: PSLD, stats: GaussianDataStats, z: Tensor, t_from: float, t_to: float) -> Tensor:
    """The exact PF-ODE flow of Gaussian data: z(t_to) = a_{t_to} mu + Φ(v) (z(t_from) − a_{t_from} mu) per
    eigendirection."""
    pairs = _pairs(stats, z)
    y = pairs - _mean(process, stats, _times(t_from), pairs)
    flow = stats.mix(y, lambda var: transition_matrices(process, var, t_from, t_to).to(y)[None])
    out = _mean(process, stats, _times(t_to), pairs) + flow
    return out.reshape(z.shape).to(z.dtype)
