"""The EDM family of processes: EDM, VP and VE (Karras et al. 2022, Table 1), in sigma-space.

All three share the kernel form ``x = s(sigma) (x_0 + sigma n)`` and differ only in how training draws sigma, the loss
weight and the preconditioning. Default constants are EDM's (NVlabs/edm ``training/networks.py`` / ``loss.py``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .base import LinearPFODE, Precond
from .gaussian_data import GaussianDataStats


def _device(generator: torch.Generator | None) -> torch.device | None:
    return None if generator is None else generator.device


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))


class EDMFamily(ABC):
    """What the EDM family shares: the state is the data, the prior N(0, sigma_max^2 I), the model a denoiser
    ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7) trained by ``lambda ||D - x_0||^2`` (EDM eq. 2).
    Subclasses give ``precond``, ``scale``, ``sample_sigma``, ``loss_weight`` and ``sampling_range``."""

    family: ClassVar[str] = "edm"
    level_name: ClassVar[str] = "sigma"
    state_groups: ClassVar[int] = 1

    @abstractmethod
    def precond(self, sigma: Tensor) -> Precond:
        """Network preconditioning coefficients at noise level sigma (EDM eq. 7)."""

    @abstractmethod
    def scale(self, sigma: Tensor) -> Tensor:
        """Kernel mean coefficient s(sigma): ``x_t | x_0 ~ N(s x_0, s^2 sigma^2 I)`` (EDM eq. 4)."""

    @abstractmethod
    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        """lambda(sigma) of EDM eq. 2 at training step ``step``."""

    @property
    def one_level_process(self) -> EDMFamily:
        """The process whose preconditioning a network run at one noise level only (a DSNO student at sigma_max)
        applies: this one."""
        return self

    def noise_shape(self, data_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        return tuple(data_shape)

    def prior(self, noise: Tensor, sigma_start: Tensor, noise_fn: Callable[[Tensor], Tensor]) -> Tensor:
        return noise * sigma_start.float()

    def data_part(self, state: Tensor) -> Tensor:
        return state

    def gaussian_model(self, stats: GaussianDataStats) -> Callable[[Tensor, Tensor | float], Tensor]:
        """The exact denoiser D(x, sigma) of Gaussian data with these statistics."""
        return stats.denoise

    def gaussian_transport(self, stats: GaussianDataStats, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """x(sigma_to) of the exact PF-ODE flow of Gaussian data from x(sigma_from) = x."""
        return stats.transport(x, sigma_from, sigma_to)

    def loss_clamp(self, step: int) -> float:
        return math.inf

    def training_loss(self, model: Callable, x0: Tensor, sigma: Tensor, noise: Tensor, step: int = 0,
                      class_labels: Tensor | None = None) -> Tensor:
        """Mean over the batch of ``lambda(sigma) * mean_pixels (D(x0 + sigma n; sigma[, y]) - x0)^2`` (EDM eq. 2)."""
        x = x0 + sigma.float().reshape((-1,) + (1,) * (x0.ndim - 1)) * noise
        weight = self.loss_weight(sigma, step).float()
        # A plain D(x, sigma) callable stays a valid model when there are no labels.
        denoised = model(x, sigma) if class_labels is None else model(x, sigma, class_labels)
        per_example = (denoised - x0).square().flatten(1).mean(1)
        return (weight * per_example).mean()

    def network_output(self, net: nn.Module, x: Tensor, sigma: Tensor | float,
                       class_labels: Tensor | None = None) -> Tensor:
        """``c_skip x + c_out F(c_in x, c_noise)``, the outer combination in fp32 (the skip path carries most of the
        signal at low noise)."""
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        pc = self.precond(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_skip, c_out, c_in = (c.float().reshape(shape) for c in (pc.c_skip, pc.c_out, pc.c_in))
        out = net(c_in * x, pc.c_noise.float(), class_labels)
        return c_skip * x + c_out * out.float()


def _edm_closed_form(ts: Sequence[float], b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact P, Q for Fbar = 0, H = 1, B = lam: ``P = e^{-lam dt}(1 + lam dt)``, ``Q = -expm1(-lam dt)/lam``."""
    lam = float(b[0, 0])
    dt = np.diff(np.asarray(ts, dtype=np.float64))
    p = np.exp(-lam * dt) * (1 + lam * dt)
    q = -np.expm1(-lam * dt) / lam if lam != 0 else dt
    return p.reshape(-1, 1, 1), q.reshape(-1, 1, 1)


# The PF-ODE of every EDM-family process in EDM time t = sigma with noise prediction eps = (x - D)/sigma:
# dx/dsigma = eps (EDM eq. 3 with s = 1), so Fbar = 0 and H = 1 (docs/samplers.md, conjugate integrators).
EDM_PF_ODE = LinearPFODE(fbar=lambda t: np.zeros((1, 1)), gain=lambda t: np.ones((1, 1)), k=1,
                         key="edm-sigma-time-eps", closed_form=_edm_closed_form)


@dataclass
class EDM(EDMFamily):
    """EDM: ln sigma ~ N(P_mean, P_std^2); lambda = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2;
    c_skip = sigma_d^2/(sigma^2+sigma_d^2), c_out = sigma sigma_d / sqrt(sigma^2+sigma_d^2),
    c_in = 1/sqrt(sigma^2+sigma_d^2), c_noise = ln(sigma)/4."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    name: str = "edm"

    def config(self) -> dict:
        return asdict(self)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        normal = torch.randn(n, generator=generator, dtype=torch.float64, device=_device(generator))
        return (normal * self.P_std + self.P_mean).exp()

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def precond(self, sigma: Tensor) -> Precond:
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).sqrt()
        return Precond(
            c_skip=sd2 / (sigma**2 + sd2),
            c_out=sigma * self.sigma_data / norm,
            c_in=1 / norm,
            c_noise=sigma.log() / 4,
        )

    def scale(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def sampling_range(self) -> tuple[float, float]:
        return max(self.sigma_min, 0.002), min(self.sigma_max, 80.0)


@dataclass
class VP(EDMFamily):
    """VP (Song et al. 2021) in EDM's form: sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1), t ~ U(eps_t, 1);
    lambda = 1/sigma^2; c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) t(sigma)."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5
    name: str = "vp"

    def __post_init__(self) -> None:
        self.sigma_min = float(self.sigma(torch.tensor(self.epsilon_t, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def config(self) -> dict:
        return {k: getattr(self, k) for k in ("beta_d", "beta_min", "M", "epsilon_t", "name")}

    def sigma(self, t: Tensor) -> Tensor:
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d."""
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = 1 + _rand(n, generator) * (self.epsilon_t - 1)
        return self.sigma(t)

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        return 1 / sigma**2

    def precond(self, sigma: Tensor) -> Precond:
        return Precond(
            c_skip=torch.ones_like(sigma),
            c_out=-sigma,
            c_in=1 / (sigma**2 + 1).sqrt(),
            c_noise=(self.M - 1) * self.sigma_inv(sigma),
        )

    def scale(self, sigma: Tensor) -> Tensor:
        return 1 / (1 + sigma**2).sqrt()

    def sampling_range(self) -> tuple[float, float]:
        return max(self.sigma_min, 0.002), min(self.sigma_max, 80.0)


@dataclass
class VE(EDMFamily):
    """VE (Song et al. 2021) in EDM's form: sigma = sigma_min (sigma_max/sigma_min)^u, u ~ U(0, 1);
    lambda = 1/sigma^2; c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma/2)."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0
    name: str = "ve"

    def config(self) -> dict:
        return asdict(self)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _rand(n, generator)

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        return 1 / sigma**2

    def precond(self, sigma: Tensor) -> Precond:
        return Precond(
            c_skip=torch.ones_like(sigma),
            c_out=sigma,
            c_in=torch.ones_like(sigma),
            c_noise=(sigma / 2).log(),
        )

    def scale(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def sampling_range(self) -> tuple[float, float]:
        return max(self.sigma_min, 0.002), min(self.sigma_max, 80.0)

