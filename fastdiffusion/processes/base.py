"""The process protocol: every forward process is a linear Gaussian SDE ``dz = F(t) z dt + G(t) dW``.

For the EDM family the state is one value per pixel and the kernel is written, as in EDM (Karras et al. 2022, eq. 4),
``x_t = s(t) (x_0 + sigma(t) n)``. Networks are exposed as denoisers ``D(x_hat, sigma) ~ E[x_0 | x_hat]`` in the
scale-free coordinates ``x_hat = x / s``, so every EDM-family sampler only needs ``D`` and a list of sigmas.

A process object owns all math that training and sampling need: how training noise levels are drawn, the loss weight,
the network preconditioning, the prior and the range of noise levels a sampler may use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Precond:
    """Preconditioning of EDM (Karras et al. 2022, eq. 7): ``D(x; s) = c_skip x + c_out F(c_in x, c_noise)``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


@runtime_checkable
class Process(Protocol):
    """What training, samplers and metrics ask of a forward process."""

    name: str
    sigma_min: float
    sigma_max: float

    def config(self) -> dict:
        """JSON-serialisable kwargs that rebuild this process through ``make_process``."""
        ...

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training noise levels, shape (n,)."""
        ...

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        """lambda(sigma) of the loss ``lambda ||D(x0 + sigma n; sigma) - x0||^2`` at training step ``step``."""
        ...

    def precond(self, sigma: Tensor) -> Precond:
        """Network preconditioning coefficients at noise level sigma."""
        ...

    def scale(self, sigma: Tensor) -> Tensor:
        """Kernel mean coefficient s(sigma): ``x_t | x_0 ~ N(s x_0, s^2 sigma^2 I)``."""
        ...

    def sampling_range(self) -> tuple[float, float]:
        """(sigma_lo, sigma_hi) a sampler integrates between by default."""
        ...
