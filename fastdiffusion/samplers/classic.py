"""EDM-family ODE samplers in sigma-space: ``dx/dsigma = (x - D(x; sigma)) / sigma`` (EDM eq. 3 with s = 1).

Every sampler has the signature ``fn(denoiser, x, sigmas, *, noise, callback, **hyper) -> x``: ``x`` is the initial
state at ``sigmas[0]`` (already scaled by it), ``sigmas`` ends in 0, ``noise(x)`` draws fresh standard normals shaped
like ``x`` (per-image seeded when called through ``fastdiffusion.sample``), and ``callback`` gets a dict per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError
from .registry import Callback, Denoise, Noise, SamplerSpec, one_call_per_step, register, step_info


@torch.no_grad()
def euler(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
          callback: Callback = None) -> Tensor:
    """Explicit Euler on the PF-ODE; with s = 1 this is DDIM (eta = 0). One call per step: NFE = len(sigmas) - 1."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
        step_info(callback, i=i, x=x, sigma=sigma, denoised=denoised)
    return x


@torch.no_grad()
def heun(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None, callback: Callback = None,
         churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> Tensor:
    """EDM Algorithm 2: Heun's 2nd-order method with an Euler last step (to sigma = 0), so NFE = 2 (len(sigmas)-1) - 1.

    With ``churn > 0`` each step in [s_tmin, s_tmax] first raises the noise level to
    ``sigma_hat = sigma (1 + gamma)``, ``gamma = min(churn / N, sqrt 2 - 1)``, adding fresh noise of std
    ``s_noise sqrt(sigma_hat^2 - sigma^2)``.
    """
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if churn > 0:  # draw every step, as EDM and k-diffusion do, so the same noise stream gives the same samples
            x = x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * (noise or torch.randn_like)(x)
        denoised = denoiser(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = (x_next - denoiser(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
        step_info(callback, i=i, x=x, sigma=sigma, sigma_hat=sigma_hat, denoised=denoised)
    return x


def _heun_steps(nfe: int) -> int:
    if nfe % 2 == 0:
        raise UserError(f"heun makes 2N-1 network calls for N steps: use an odd --nfe (e.g. {nfe - 1} or {nfe + 1})")
    return (nfe + 1) // 2


register(SamplerSpec("euler", euler, one_call_per_step, "Euler on the PF-ODE (= DDIM), 1st order"))
register(SamplerSpec("heun", heun, _heun_steps,
                     "EDM's Heun sampler (2nd order, Euler last step); churn > 0 makes it stochastic",
                     hyper={"churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}))
