"""Multistep EDM-family samplers in ``lambda = -ln sigma``: DDIM, DPM-Solver++ (2M, 3M), UniPC (bh2) and iPNDM.

One network call per step; the step to sigma = 0 returns the last denoiser output, so NFE = len(sigmas) - 1.
Weights w_k, order schedule and derivations: docs/samplers.md, "Multistep solvers". DDIM and DPM-Solver++ are
differentiable in their grid and per-step parameters (``samplers.learned`` fits them by gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..expint import phi
from .registry import Callback, Denoise, Noise, SamplerSpec, one_call_per_step, register, step_info


def half_log_snr(sigmas: Tensor) -> list[float]:
    """``lambda_i = -ln sigma_i`` for the positive sigmas of a grid, as host floats (the trailing 0 is left out)."""
    return [-math.log(s) for s in sigmas.tolist() if s > 0]


def phi_weights(h: float | Tensor, n: int) -> list:
    """``w_k(h) = int_0^h e^{-(h-tau)} tau^k/k! dtau = h^{k+1} phi_{k+1}(-h)``, k < n (floats for a float h)."""
    w = [h ** (k + 1) * phi(k + 1, -h) for k in range(n)]
    return w if isinstance(h, Tensor) else [float(v) for v in w]


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float]:
    """Solve the small dense system ``rows @ a = rhs`` in float64."""
    a = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return a.tolist()


# Below this many steps the last steps use lower orders (DPM-Solver's ``lower_order_final`` threshold).
LOWER_ORDER_FINAL_BELOW = 10


# Third order only on grids whose steps in lambda are all at most this: on coarser grids (Karras at low NFE) the
# quadratic extrapolation of D over the huge early steps diverges, even on exact scores (docs/samplers.md).
THIRD_ORDER_MAX_STEP = 1.2


def stable_order(order: int, hls: Sequence[float]) -> int:
    """``order``, capped at 2 when a step between the grid's positive levels exceeds ``THIRD_ORDER_MAX_STEP``."""
    steps = [b - a for a, b in zip(hls[:-1], hls[1:], strict=True)]
    return min(order, 2) if steps and max(steps) > THIRD_ORDER_MAX_STEP else order


def _order(order: int, i: int, n_steps: int) -> int:
    """Order of step ``i`` of ``n_steps``: warm-up, then lower-order final steps (docs/samplers.md, order schedule)."""
    final = n_steps - i if n_steps < LOWER_ORDER_FINAL_BELOW else order
    return max(1, min(order, i + 1, final))


def ddim(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
         callback: Callback = None) -> Tensor:
    """DDIM = DPM-Solver++(1): ``x_{i+1} = r x_i + (1 - r) D_i``, ``r = sigma_{i+1}/sigma_i`` (Euler for s = 1)."""
    return dpmpp_multistep(denoiser, x, sigmas, noise=noise, callback=callback, order=1)


def dpmpp_multistep(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
                    callback: Callback = None, order: int = 2, call_sigmas: Sequence[float] | Tensor | None = None,
                    corrections: Sequence[float] | Tensor | None = None) -> Tensor:
    """DPM-Solver++(kM), data prediction, k = ``order`` <= 3 (Lu et al. 2022, arXiv 2211.01095); 3M in Taylor form.
    Step i asks the network at ``call_sigmas[i]`` (LD3's decoupled level; default sigma_i) and scales its terms above
    first order by 1 + ``corrections[i]`` (default 0)."""
    sig = sigmas.tolist()
    n_steps = len(sig) - 1
    # The step coefficients are floats unless a fit differentiates through them; then they stay on x's device.
    fit = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                          for t in (sigmas, call_sigmas, corrections))
    device = sigmas.device if fit else torch.device("cpu")
    hls = -torch.log(sigmas[:n_steps].to(device))
    order = stable_order(order, hls.tolist())
    calls = sigmas if call_sigmas is None else torch.as_tensor(call_sigmas, dtype=sigmas.dtype)
    scale = None if corrections is None else 1 + torch.as_tensor(corrections, dtype=torch.float64, device=device)
    history: list[Tensor] = []
    for i in range(n_steps):
        denoised = denoiser(x, calls[i])
        history = [denoised, *history[:2]]
        if sig[i + 1] == 0:  # the step to sigma = 0 is the denoised output (docs/samplers.md)
            x = denoised
        else:
            x = _dpmpp_update(x, history, hls[max(0, i - 2):i + 2].flip(0), _order(order, i, n_steps),
                              1.0 if scale is None else _coefficient(scale[i]))
        step_info(callback, i=i, x=x, sigma=sigmas[i], denoised=denoised)
    return x


def _coefficient(c: Tensor) -> Tensor | float:
    """A step coefficient as a float, so that sampling launches no kernel for it, unless a fit needs its gradient."""
    return c if c.requires_grad else float(c)


def _dpmpp_update(x: Tensor, d: Sequence[Tensor], hls: Tensor, order: int, scale: Tensor | float = 1.0) -> Tensor:
    """One DPM-Solver++ step; ``d = [D_i, D_{i-1}, ...]``, ``hls = [lambda_{i+1}, lambda_i, lambda_{i-1}, ...]``; the
    terms above first order times ``scale``."""
    h = _coefficient(hls[0] - hls[1])
    w = phi_weights(h, 3)
    x = _coefficient(torch.exp(hls[1] - hls[0])) * x + w[0] * d[0]
    if order == 2:
        r = _coefficient(hls[1] - hls[2]) / h
        x = x + (scale * w[0] / (2 * r)) * (d[0] - d[1])
    elif order >= 3:
        h1, h2 = _coefficient(hls[1] - hls[2]), _coefficient(hls[2] - hls[3])
        f01, f12 = (d[0] - d[1]) / h1, (d[1] - d[2]) / h2
        f012 = (f01 - f12) / (h1 + h2)
        # w_2 D'' with D'' = 2 f012: 3rd order; DPM-Solver's 3M weight w_2 f012 is 2nd order (docs/samplers.md)
        x = x + scale * (w[1] * (f01 + h1 * f012) + (2 * w[2]) * f012)
    return x


def dpmpp_2m(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
             callback: Callback = None, **per_step: Sequence[float] | Tensor | None) -> Tensor:
    """DPM-Solver++(2M): ``dpmpp_multistep`` with order 2 (k-diffusion's ``sample_dpmpp_2m``)."""
    return dpmpp_multistep(denoiser, x, sigmas, noise=noise, callback=callback, order=2, **per_step)


def dpmpp_3m(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
             callback: Callback = None, **per_step: Sequence[float] | Tensor | None) -> Tensor:
    """DPM-Solver++(3M): ``dpmpp_multistep`` with order 3."""
    return dpmpp_multistep(denoiser, x, sigmas, noise=noise, callback=callback, order=3, **per_step)


def unipc_coefficients(h: float, rs: Sequence[float]) -> list[float]:
    """UniPC-bh2 ``a`` (Zhao et al. 2023, arXiv 2302.04867): ``sum_m a_m r_m^(k-1) = k! w_k/(h^k w_0)``; 1 node: 1/2."""
    if len(rs) == 1:
        return [0.5]
    w = phi_weights(h, len(rs) + 1)
    rhs = [math.factorial(k) * w[k] / (h**k * w[0]) for k in range(1, len(rs) + 1)]
    return _solve([[r ** (k - 1) for r in rs] for k in range(1, len(rs) + 1)], rhs)


def _unipc_update(x: Tensor, d0: Tensor, diffs: Sequence[Tensor], rs: Sequence[float], h: float) -> Tensor:
    """``e^{-h} x + B(h) [D_i + sum_m a_m diffs_m / r_m]`` with ``diffs_m = D(lambda_i + r_m h) - D_i``."""
    w0 = -math.expm1(-h)
    x = math.exp(-h) * x + w0 * d0
    if rs:
        for a, r, diff in zip(unipc_coefficients(h, rs), rs, diffs, strict=True):
            x = x + (w0 * a / r) * diff
    return x


@torch.no_grad()
def unipc(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None, callback: Callback = None,
          order: int = 3) -> Tensor:
    """UniPC bh2 (Zhao et al. 2023): UniP-p predictor, UniC-p corrector on the next step's call (none on the last)."""
    sig, hls = sigmas.tolist(), half_log_snr(sigmas)
    n_steps = len(sig) - 1
    order = stable_order(order, hls)
    hist: list[Tensor] = [denoiser(x, sigmas[0])]
    for i in range(n_steps):
        denoised = hist[0]
        if sig[i + 1] == 0:
            x = denoised
        else:
            p = _order(order, i, n_steps)
            h = hls[i + 1] - hls[i]
            rs = [(hls[i - m] - hls[i]) / h for m in range(1, p)]
            diffs = [hist[m] - denoised for m in range(1, p)]
            x_pred = _unipc_update(x, denoised, diffs, rs, h)
            d_next = denoiser(x_pred, sigmas[i + 1])
            last = i + 2 > n_steps or sig[i + 2] == 0
            x = x_pred if last else _unipc_update(x, denoised, [*diffs, d_next - denoised], [*rs, 1.0], h)
            hist = [d_next, *hist[:order]]
        step_info(callback, i=i, x=x, sigma=sigmas[i], denoised=denoised)
    return x


# Adams-Bashforth weights for equal steps, newest derivative first (order 1..4).
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def ipndm(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None, callback: Callback = None,
          order: int = 4) -> Tensor:
    """iPNDM (Zhang & Chen 2023, arXiv 2204.13902): equal-step Adams-Bashforth of order <= 4 in sigma (EDM eq. 3)."""
    sig = sigmas.tolist()
    ds: list[Tensor] = []
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sigmas[i])
        if sig[i + 1] == 0:
            x = denoised
        else:
            ds = [(x - denoised) / sig[i], *ds[:3]]
            weights = ADAMS_BASHFORTH[min(order, 4, len(ds)) - 1]
            x = x + (sig[i + 1] - sig[i]) * sum(c * d for c, d in zip(weights, ds, strict=False))
        step_info(callback, i=i, x=x, sigma=sigmas[i], denoised=denoised)
    return x


register(SamplerSpec("ddim", ddim, one_call_per_step,
                     "DDIM = DPM-Solver++(1), 1st-order data-prediction exponential integrator (= euler for s = 1)"))
# DPM-Solver++'s per-step parameters, one value per step, which `fastdiffusion tune --learn` fits (samplers.learned).
DPMPP_PER_STEP = {"call_sigmas": None, "corrections": None}
register(SamplerSpec("dpmpp-2m", dpmpp_2m, one_call_per_step,
                     "DPM-Solver++(2M): 2nd-order multistep, data prediction, in lambda = -ln sigma",
                     schedule="logsnr", hyper=dict(DPMPP_PER_STEP), per_step=tuple(DPMPP_PER_STEP)))
register(SamplerSpec("dpmpp-3m", dpmpp_3m, one_call_per_step,
                     "DPM-Solver++(3M): 3rd-order multistep, data prediction, in lambda = -ln sigma",
                     schedule="logsnr", hyper=dict(DPMPP_PER_STEP), per_step=tuple(DPMPP_PER_STEP)))
register(SamplerSpec("unipc", unipc, one_call_per_step,
                     "UniPC (bh2, data prediction) predictor-corrector, order up to 3 (option order=1..3)",
                     schedule="logsnr", hyper={"order": 3}))
register(SamplerSpec("ipndm", ipndm, one_call_per_step,
                     "iPNDM: Adams-Bashforth on the PF-ODE in sigma, order up to 4 (option order=1..4)",
                     hyper={"order": 4}))
