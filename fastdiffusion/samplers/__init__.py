"""Samplers: plain functions with one signature, looked up by name through ``get_sampler``.

Each sampler module registers its samplers when imported; importing this package imports them all.
"""

from . import (
    classic,  # noqa: F401  (registers euler, heun)
    conjugate,  # noqa: F401  (registers lambda-ddim, conjugate-ddim)
    dsno,  # noqa: F401  (registers dsno, the one-call sampler of DSNO students)
    multistep,  # noqa: F401  (registers ddim, dpmpp-2m, dpmpp-3m, unipc, ipndm)
    splitting,  # noqa: F401  (registers the PSLD samplers: em, sscs, nse, rse, nvv, rvv, noba, roba, sps-s, ...)
)
from .registry import SAMPLERS, SamplerSpec, deterministic_edm_samplers, get_sampler, one_call_per_step, register
from .schedules import SCHEDULES, make_sigmas

__all__ = ["SAMPLERS", "SCHEDULES", "SamplerSpec", "deterministic_edm_samplers", "get_sampler", "make_sigmas",
           "one_call_per_step", "register"]
