"""DSNO's one-call sampler (family 'dsno'): a ``OneStepGenerator`` maps the initial state to the teacher's whole
trajectory in one network call, and the sample is the trajectory's t = 0 point."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from ..models import OneStepGenerator
from .counted import CountedModel
from .registry import Callback, Noise, SamplerSpec, register, step_info


@torch.no_grad()
def dsno(generator: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
         callback: Callback = None) -> Tensor:
    """``traj = G(x_T)`` with x_T = ``x`` at ``sigmas[0]``, shape (N, M, ...), in one call; returns ``traj[:, 0]``.

    ``callback`` receives the M trajectory points from the noise end to the data end: ``{'i': k, 'x': traj[:, m],
    'sigma': sigma_m, 'denoised': traj[:, 0]}`` with m = M - 1 - k (sigma_m is None if the model does not say it).
    """
    traj = generator(x, sigmas[0])
    if callback is not None:
        model = generator.model if isinstance(generator, CountedModel) else generator
        out_sigmas = model.sigmas if isinstance(model, OneStepGenerator) else None
        num_times = traj.shape[1]
        for k in range(num_times):
            m = num_times - 1 - k
            sigma = None if out_sigmas is None else out_sigmas[m]
            step_info(callback, i=k, x=traj[:, m], sigma=sigma, denoised=traj[:, 0])
    return traj[:, 0]


def _one_call(nfe: int) -> int:
    if nfe != 1:
        raise UserError(f"the dsno sampler makes exactly one network call: use --nfe 1, not {nfe}")
    return 1


register(SamplerSpec("dsno", dsno, _one_call, "DSNO one-step student: noise -> trajectory in one call (--nfe 1)",
                     family="dsno"))
