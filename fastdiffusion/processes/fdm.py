"""FDM: the momentum-based (critically damped) variant of an EDM-family process (Wu et al. 2023, arXiv 2306.06991).

The momentum process ``dx = m beta(t) v dt, dv = -m beta(t) (x + 2 v) dt`` is a critically damped oscillator in the
warped time ``B(t) = m int_0^t beta``; with zero initial velocity its mean is ``x_0 e^{-B} (1 + B)``. FDM keeps the base
process's noise levels, target, c_skip, c_out and c_noise and changes two things:

1. ``c_in(sigma) = s_FDM(sigma) = e^{-B} (1 + B)`` with ``B = m (beta_min tau + beta_d tau^2 / 2)`` and
   ``tau = (sigma - sigma_min) / (sigma_max - sigma_min)`` -- linear in sigma for every base process;
2. a warm-up clamp on the loss weight: ``lambda <- min(lambda, 5 * 100^(k / warmup_ite))`` for loss evaluation
   ``k < warmup_ite``, and no clamp afterwards.

Two defects of the reference code are fixed here: its VE variant ignores the multiplier ``m`` (we always use it), and
its clamp lives on the loss object and restarts on resume (here it is a pure function of the optimiser step, which the
checkpoint stores). The reference counts per-GPU loss calls; we count optimiser steps, which is the same without
gradient accumulation and keeps accumulation from changing the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .base import Precond
from .edm import EDMFamily

CLAMP_START = 5.0
CLAMP_END = 500.0


@dataclass
class FDM(EDMFamily):
    """FDM variant of ``base`` (an EDM, VP or VE process)."""

    base: EDMFamily
    multiplier: float = 2.0
    warmup_ite: int = 200
    fdm_beta_min: float = 0.1
    fdm_beta_d: float = 19.9

    @property
    def name(self) -> str:
        return f"fdm-{self.base.name}"

    @property
    def sigma_min(self) -> float:
        return self.base.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.base.sigma_max

    @property
    def one_level_process(self) -> EDMFamily:
        """The base process: FDM's c_in = s_FDM(sigma) is ~4e-8 at sigma_max = 80, so a network seeing only that level
        would get its noise at ~3e-6 and make one image for every noise; the base has FDM's c_skip, c_out and c_noise
        and a unit-scale c_in."""
        return self.base

    def config(self) -> dict:
        base = {k: v for k, v in self.base.config().items() if k != "name"}
        fdm = {k: getattr(self, k) for k in ("multiplier", "warmup_ite", "fdm_beta_min", "fdm_beta_d")}
        return {"name": self.name, **base, **fdm}

    def s_fdm(self, sigma: Tensor) -> Tensor:
        """Critically damped kernel mean ``s_FDM = e^{-B} (1 + B)``, ``B = m (beta_min tau + beta_d tau^2 / 2)``."""
        tau = (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min)
        big_b = self.multiplier * (self.fdm_beta_min * tau + 0.5 * self.fdm_beta_d * tau**2)
        return (-big_b).exp() * (1 + big_b)

    def loss_clamp(self, step: int) -> float:
        """Upper bound on lambda at loss evaluation ``step``: ``5 * 100^(step / warmup_ite)``, inf once >= 500."""
        if self.warmup_ite <= 0 or step >= self.warmup_ite:
            return math.inf
        return CLAMP_START * (CLAMP_END / CLAMP_START) ** (step / self.warmup_ite)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.base.sample_sigma(n, generator)

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        return self.base.loss_weight(sigma, step).clamp(max=self.loss_clamp(step))

    def precond(self, sigma: Tensor) -> Precond:
        return replace(self.base.precond(sigma), c_in=self.s_fdm(sigma))

    def scale(self, sigma: Tensor) -> Tensor:
        return self.s_fdm(sigma)

    def sampling_range(self) -> tuple[float, float]:
        return self.base.sampling_range()
