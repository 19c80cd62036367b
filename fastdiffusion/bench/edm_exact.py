"""Exact EDM-family references on Gaussian-mixture data: the denoiser and the PF-ODE endpoint (docs/benchmarks.md)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..data.gmm import GaussianMixture

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM's sampling range


class MixtureDenoiser:
    """``D(x; sigma) = x - sigma^2 sum_k r_k(x) (x - mu_k) / (v_k + sigma^2)`` by matrix products per sigma."""

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        self.mu, self.var, self.log_w = mixture.means, mixture.variances, mixture.weights.log()

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if len(sigma) > 1 and not bool((sigma == sigma[0]).all()):  # one sigma per row: the reference evaluation
            return self.mixture.denoise(x, sigma)
        s2 = sigma[0].square()  # a tensor: a fit by gradient differentiates through sigma
        flat = x.reshape(len(x), -1).to(torch.float64)
        inv = 1.0 / (self.var + s2)  # (K, D)
        mu_inv = self.mu * inv
        quad = (flat * flat) @ inv.T - 2 * flat @ mu_inv.T + (self.mu * mu_inv).sum(1)  # (n, K)
        r = torch.softmax(self.log_w - 0.5 * (quad - inv.log().sum(1)), dim=1)
        out = flat - s2 * (flat * (r @ inv) - r @ mu_inv)
        return out.reshape(x.shape).to(x.dtype)


def exact_state(mixture: GaussianMixture, x_t: Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rtol: float = 1e-10) -> tuple[Tensor, int]:
    """``x(sigma_min)`` of the PF-ODE ``dx/du = x - D(x; e^u)``, u = ln sigma, from ``x(sigma_max) = x_t`` (float64
    DOP853), and the number of right-hand-side evaluations it took."""
    from scipy.integrate import solve_ivp

    shape = x_t.shape
    denoise = MixtureDenoiser(mixture)

    def rhs(u: float, flat: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(flat).reshape(shape)
        return (x - denoise(x, math.exp(u))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(sigma_min)), x_t.double().reshape(-1).numpy(),
                    method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"exact PF-ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape), int(sol.nfev)


def exact_endpoint(mixture: GaussianMixture, x_t: Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                   rtol: float = 1e-10) -> tuple[Tensor, int]:
    """``D(x(sigma_min); sigma_min)`` after ``exact_state``, and its number of right-hand-side evaluations."""
    x, nfev = exact_state(mixture, x_t, sigma_min, sigma_max, rtol)
    return MixtureDenoiser(mixture)(x, sigma_min), nfev
