"""The benchmark problems (Gaussian mixtures with exact scores) and how each sampler family is posed on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..data.gmm import GaussianMixture
from ..processes import EDM, PSLD, Process
from . import psld_exact
from .edm_exact import SIGMA_MAX, SIGMA_MIN, MixtureDenoiser, exact_endpoint


@dataclass(frozen=True)
class Problem:
    """A mixture and the seed of its start and data draws."""

    name: str
    make: Callable[[], GaussianMixture]
    dim: int
    seed: int


@dataclass(frozen=True)
class Family:
    """A sampler family on mixtures: its process (prior, range, data part), the exact model of a mixture, and
    ``exact(model, start, rtol) -> (x at the end of the exact PF-ODE and last step, evaluations)``."""

    process: Process
    model: Callable[[GaussianMixture], Callable[[Tensor, Tensor], Tensor]]
    exact: Callable[[Callable, Tensor, float], tuple[Tensor, int]]


EDM_FAMILY = Family(EDM(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX), MixtureDenoiser,
                    lambda denoise, x_t, rtol: exact_endpoint(denoise.mixture, x_t, rtol=rtol))
_PSLD = PSLD()  # the reference CIFAR-10 constants
PSLD_FAMILY = Family(_PSLD, lambda mixture: psld_exact.PSLDMixtureEps(mixture, _PSLD), psld_exact.exact_endpoint)


def _random2d(seed: int) -> Callable[[], GaussianMixture]:
    return lambda: GaussianMixture.random(2, 8, seed=seed, component_std=0.2)


def _random64(seed: int) -> Callable[[], GaussianMixture]:
    return lambda: GaussianMixture.random(64, 16, seed=seed, spread=0.9, component_std=0.3)


EDM_PROBLEMS = (
    Problem("ring2d", GaussianMixture.ring2d, 2, 11),
    Problem("random2d", _random2d(2), 2, 12),
    Problem("benchmark64", GaussianMixture.benchmark64, 64, 13),
    Problem("random64", _random64(65), 64, 14),
)
EDM_QUICK = ("ring2d", "benchmark64")
PSLD_PROBLEMS = (Problem("ring2d", GaussianMixture.ring2d, 2, 21),
                 Problem("benchmark64", GaussianMixture.benchmark64, 64, 22))
PSLD_TUNING = (Problem("tune2d", _random2d(2002), 2, 31), Problem("tune64", _random64(2064), 64, 32))
