"""The process protocol: every forward process is a linear Gaussian SDE ``dz = F(t) z dt + G(t) dW``.

A process owns all the math that training, samplers and metrics ask for (docs/samplers.md): the sampler family and
state layout, the prior, how training noise is drawn and the training loss, the model's parameterisation, the
sampling range and the linear PF-ODE that conjugate integrators discretise. Nobody asks a process what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from .gaussian_data import GaussianDataStats


@dataclass(frozen=True)
class Precond:
    """Preconditioning of EDM (Karras et al. 2022, eq. 7): ``D(x; s) = c_skip x + c_out F(c_in x, c_noise)``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


@dataclass(frozen=True)
class LinearPFODE:
    """``dz/dt = fbar(t) z + gain(t) y`` with (k, k) float64 blocks per pixel (Pandey et al. 2024, eq. 6); ``key``
    identifies it in coefficient caches and ``closed_form(ts, b)`` gives exact (P, Q) for a constant B if known."""

    fbar: Callable[[float], np.ndarray]
    gain: Callable[[float], np.ndarray]
    k: int
    key: Hashable
    closed_form: Callable[[Sequence[float], np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearPFODE) and self.key == other.key


@runtime_checkable
class Process(Protocol):
    """What training, samplers and metrics ask of a forward process; every process implements all of it."""

    name: str
    family: str  # the samplers that integrate it: 'edm' (D(x, sigma) in sigma-space) or 'psld' (eps(z, t))
    level_name: str  # what its noise levels are, in messages: 'sigma' (EDM family) or 't' (PSLD's times)
    state_groups: int  # channel groups of the diffused state per data channel: 1, or 2 for PSLD's (x, m)
    sigma_min: float
    sigma_max: float

    def config(self) -> dict:
        """JSON-serialisable kwargs that rebuild this process through ``make_process``."""
        ...

    # -- state ---------------------------------------------------------------------------------------------------
    def noise_shape(self, data_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """Shape of one training step's noise for a data batch of ``data_shape``."""
        ...

    def prior(self, noise: Tensor, sigma_start: Tensor, noise_fn: Callable[[Tensor], Tensor]) -> Tensor:
        """The sampler's initial state at ``sigma_start`` from standard-normal ``noise`` of the data's shape."""
        ...

    def data_part(self, state: Tensor) -> Tensor:
        """The data channels of a sampler state."""
        ...

    # -- Gaussian data (the analytic first step and the teleport) ------------------------------------------------
    def gaussian_model(self, stats: GaussianDataStats) -> Callable[[Tensor, Tensor | float], Tensor]:
        """The exact model output (what the network approximates) when the data are N(mean, covariance) of
        ``stats``: D(x, sigma) (EDM family) or eps(z, t) (PSLD)."""
        ...

    def gaussian_transport(self, stats: GaussianDataStats, state: Tensor, sigma_from: float, sigma_to: float
                           ) -> Tensor:
        """The sampler state at ``sigma_to`` by the exact PF-ODE flow of that Gaussian data from ``state`` at
        ``sigma_from``."""
        ...

    # -- training ------------------------------------------------------------------------------------------------
    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training noise levels (PSLD: times), shape (n,), float64."""
        ...

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        """The loss weight at noise level ``sigma`` and training step ``step``."""
        ...

    def loss_clamp(self, step: int) -> float:
        """Upper bound on the loss weight at training step ``step`` (inf: none)."""
        ...

    def training_loss(self, model: Callable, x0: Tensor, sigma: Tensor, noise: Tensor, step: int = 0,
                      class_labels: Tensor | None = None) -> Tensor:
        """Mean training loss of ``model`` on clean data ``x0`` with this step's noise levels and noise; with
        ``class_labels`` (one-hot (N, K), all-zero = no class) the model is called ``model(x, sigma, class_labels)``."""
        ...

    # -- the model -----------------------------------------------------------------------------------------------
    def network_output(self, net: nn.Module, x: Tensor, sigma: Tensor | float,
                       class_labels: Tensor | None = None) -> Tensor:
        """The model's output from its plain network: D(x; sigma) (EDM family) or eps(z, t) (PSLD), in fp32."""
        ...

    # -- sampling ------------------------------------------------------------------------------------------------
    def sampling_range(self) -> tuple[float, float]:
        """(sigma_lo, sigma_hi) a sampler integrates between by default."""
        ...
