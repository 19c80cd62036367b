"""Samplers by name, each with its NFE rule, default schedule and hyperparameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UserError


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler ``fn`` and how to drive it: ``steps(nfe)`` is the number of sigma intervals giving exactly ``nfe``
    network calls (or a UserError), ``schedule`` the default discretisation, ``hyper`` the default hyperparameters."""

    name: str
    fn: Callable
    steps: Callable[[int], int]
    help: str
    schedule: str = "karras"
    stochastic: bool = False
    family: str = "edm"
    hyper: dict = field(default_factory=dict)


SAMPLERS: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler to the name registry (each sampler module registers its own at import)."""
    SAMPLERS[spec.name] = spec
    return spec


def one_call_per_step(nfe: int) -> int:
    """NFE rule of single-call-per-step samplers."""
    return nfe


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler '{name}': choose one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
