"""The sampler signature and the registry of samplers by name, each with its NFE rule, default schedule and
hyperparameters.

Every sampler is ``fn(model, x, sigmas, *, noise, callback, **hyper) -> x``: ``model`` is a ``Denoise`` (EDM family),
an ``EpsModel`` (PSLD) or a one-step generator (DSNO), ``x`` the initial state at ``sigmas[0]``, ``sigmas`` the
decreasing noise levels (PSLD: times) ending in 0, ``noise(x)`` draws fresh standard normals shaped like ``x`` and
``callback`` receives a dict per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from ..errors import UserError
from ..processes import Process

Denoise = Callable[[Tensor, Tensor], Tensor]
Noise = Callable[[Tensor], Tensor]
Callback = Callable[[dict], None] | None


class EpsModel(Protocol):
    """A PSLD model as its samplers see it: ``eps(z, t)`` and the process whose coefficients they ask for."""

    process: Process

    def __call__(self, z: Tensor, t: Tensor) -> Tensor: ...


def step_info(callback: Callback, **info: object) -> None:
    """Hand one step's values to ``callback`` (if any)."""
    if callback is not None:
        callback(info)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler ``fn`` and how to drive it: ``steps(nfe)`` is the number of sigma intervals giving exactly ``nfe``
    network calls (or a UserError), ``schedule`` the default discretisation, ``hyper`` the default hyperparameters,
    ``per_step`` those of them that take one value per step (a sequence), not a number."""

    name: str
    fn: Callable
    steps: Callable[[int], int]
    help: str
    schedule: str = "karras"
    stochastic: bool = False
    family: str = "edm"
    hyper: dict = field(default_factory=dict)
    per_step: tuple[str, ...] = ()


SAMPLERS: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler to the name registry (each sampler module registers its own at import)."""
    SAMPLERS[spec.name] = spec
    return spec


def one_call_per_step(nfe: int) -> int:
    """NFE rule of single-call-per-step samplers."""
    return nfe


def deterministic_samplers(family: str) -> list[str]:
    """Names of the deterministic samplers of a model family (those a trajectory or a tuned grid can be defined for)."""
    return sorted(n for n, s in SAMPLERS.items() if s.family == family and not s.stochastic)


def deterministic_edm_samplers() -> list[str]:
    """Names of the deterministic EDM-family samplers."""
    return deterministic_samplers("edm")


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler '{name}': choose one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
