"""Discrete-time VP (DDPM, Ho et al. 2020): a network trained at T timesteps of a schedule alpha_bar_0 > ... >
alpha_bar_{T-1}, as an EDM-family process in sigma-space -- the mapping of k-diffusion's ``DiscreteEpsDDPMDenoiser`` /
``DiscreteVDDPMDenoiser``, with the network's prediction (epsilon, v or x_0) turned into D(x; sigma) by the
preconditioning (docs/models.md, "Discrete-time models")::

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)            x_sigma = x_DDPM / sqrt(alpha_bar_t) = x_0 + sigma_t n
    c_in = 1 / sqrt(sigma^2 + 1)                                (back to the DDPM scale the network was trained on)
    c_noise = t(sigma): log sigma interpolated linearly between the discrete log sigma_t, clamped to [0, T-1]
              (quantize: the index of the nearest sigma_t, as EDM's iDDPM preconditioning rounds)
    epsilon:  c_skip = 1,                c_out = -sigma                    (D = x - sigma eps)
    v:        c_skip = 1 / (sigma^2+1),  c_out = -sigma / sqrt(sigma^2+1)  (D = x/(s^2+1) - s v/sqrt(s^2+1))
    sample:   c_skip = 0,                c_out = 1                         (D = the network's x_0)

Sampling runs on [sigma_0, sigma_{T-1}], the discrete schedule's own range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserError
from .base import Precond
from .edm import EDMFamily, _rand

PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def ddpm_alphas_cumprod(beta_schedule: str, num_timesteps: int, beta_start: float = 1e-4,
                        beta_end: float = 0.02, trained_betas: Sequence[float] | None = None) -> list[float]:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) for DDPM's schedules, in fp32 as diffusers computes them: 'linear'
    betas (Ho et al. 2020), 'scaled_linear' (linear in sqrt(beta), Stable Diffusion) and 'squaredcos_cap_v2'
    (Nichol & Dhariwal 2021: beta_t = min(1 - f(t+1)/f(t), 0.999), f(t) = cos^2((t/T + 0.008)/1.008 pi/2)), or
    ``trained_betas`` given as they are."""
    if trained_betas is not None:
        betas = torch.tensor(list(trained_betas), dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        f = [math.cos((i / num_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(num_timesteps + 1)]
        betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(num_timesteps)], dtype=torch.float32)
    else:
        raise UserError(f"beta schedule {beta_schedule!r} is not supported; choose one of {', '.join(BETA_SCHEDULES)}")
    return torch.cumprod(1 - betas, 0).tolist()


@dataclass
class DiscreteVP(EDMFamily):
    """A DDPM network's process: ``alphas_cumprod`` (T values, decreasing in (0, 1)), what the network predicts
    (``PREDICTIONS``) and whether its timestep input is rounded (``quantize``); see the module docstring."""

    alphas_cumprod: Sequence[float]
    prediction: str = "epsilon"
    quantize: bool = False
    name: str = "discrete-vp"
    log_sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise UserError(f"prediction {self.prediction!r} is not supported; choose one of {', '.join(PREDICTIONS)}")
        a = torch.as_tensor(list(self.alphas_cumprod), dtype=torch.float64)
        if a.ndim != 1 or len(a) < 2 or not bool(((a > 0) & (a < 1)).all() and (a[1:] < a[:-1]).all()):
            raise UserError("alphas_cumprod must be at least 2 values decreasing strictly inside (0, 1) (a schedule "
                            "with zero terminal SNR has no finite sigma_max)")
        self.alphas_cumprod = a.tolist()
        self.log_sigmas = ((1 - a) / a).log() / 2
        self._on_device: dict[torch.device, Tensor] = {}

    @property
    def sigma_min(self) -> float:
        return math.exp(float(self.log_sigmas[0]))

    @property
    def sigma_max(self) -> float:
        return math.exp(float(self.log_sigmas[-1]))

    def config(self) -> dict:
        return {"name": self.name, "alphas_cumprod": list(self.alphas_cumprod), "prediction": self.prediction,
                "quantize": self.quantize}

    def sigmas(self) -> Tensor:
        """The discrete noise levels sigma_t, t = 0 .. T-1, increasing, float64."""
        return self.log_sigmas.exp()

    def timestep(self, sigma: Tensor) -> Tensor:
        """t(sigma): the fractional timestep, linear in log sigma between the two nearest discrete levels, clamped to
        [0, T-1] (k-diffusion's ``DiscreteSchedule.sigma_to_t``); with ``quantize``, the index of the nearest
        sigma_t."""
        log_sigmas = self._on_device.setdefault(sigma.device, self.log_sigmas.to(sigma.device))
        if self.quantize:
            return (sigma.to(torch.float64)[..., None] - log_sigmas.exp()).abs().argmin(-1).to(torch.float64)
        log_sigma = sigma.to(torch.float64).log()
        hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        lo_value, hi_value = log_sigmas[hi - 1], log_sigmas[hi]
        w = ((log_sigma - lo_value) / (hi_value - lo_value)).clamp(0, 1)
        return hi - 1 + w

    def precond(self, sigma: Tensor) -> Precond:
        norm = (sigma**2 + 1).sqrt()
        c_noise = self.timestep(sigma)
        if self.prediction == "epsilon":
            return Precond(c_skip=torch.ones_like(sigma), c_out=-sigma, c_in=1 / norm, c_noise=c_noise)
        if self.prediction == "v_prediction":
            return Precond(c_skip=1 / norm**2, c_out=-sigma / norm, c_in=1 / norm, c_noise=c_noise)
        return Precond(c_skip=torch.zeros_like(sigma), c_out=torch.ones_like(sigma), c_in=1 / norm, c_noise=c_noise)

    def scale(self, sigma: Tensor) -> Tensor:
        return 1 / (1 + sigma**2).sqrt()

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """DDPM's training draw: t uniform on {0, ..., T-1}, returned as sigma_t."""
        t = (_rand(n, generator) * len(self.log_sigmas)).long().clamp(max=len(self.log_sigmas) - 1)
        return self.log_sigmas.to(t.device)[t].exp()

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        """lambda = 1 / c_out^2: the plain squared error of the network's own target (DDPM's 'simple' loss)."""
        return 1 / self.precond(sigma).c_out ** 2

    def sampling_range(self) -> tuple[float, float]:
        return self.sigma_min, self.sigma_max
