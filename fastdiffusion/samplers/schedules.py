"""Noise-level discretisations: each returns ``n`` decreasing sigmas from sigma_max to sigma_min, then a final 0.

A grid fitted to one model comes from ``fastdiffusion.samplers.tuning`` (``fastdiffusion tune``), not from here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def log_snr(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Uniform in log-SNR = -2 ln sigma (geometric sigmas), DPM-Solver's 'logSNR' skip type."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


def time_uniform(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Uniform in t = sigma (EDM's time variable)."""
    return torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)


def quadratic(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Quadratic in t = sigma: dense near sigma_min (``karras`` with rho = 2)."""
    return karras(n, sigma_min, sigma_max, 2.0)


SCHEDULES = {"karras": karras, "logsnr": log_snr, "time-uniform": time_uniform, "quadratic": quadratic}


def make_sigmas(schedule: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``n`` sigmas of ``schedule`` followed by 0 (length n + 1, float64)."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{schedule}': choose one of {', '.join(SCHEDULES)}")
    if n < 1:
        raise UserError(f"a schedule needs at least 1 noise level, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise UserError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if n == 1:  # one step goes straight from sigma_max to 0
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        sigmas = SCHEDULES[schedule](n, sigma_min, sigma_max, rho)
    return torch.cat([sigmas, sigmas.new_zeros(1)])
