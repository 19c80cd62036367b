"""Multistep EDM-family samplers: DDIM, DPM-Solver++ (2M, 3M), UniPC (bh2) and iPNDM. One network call per step.

Notation (EDM with s = 1, the sigma-space every EDM-family denoiser lives in): ``lambda = -ln sigma`` (half the
log-SNR), ``h_i = lambda_{i+1} - lambda_i > 0`` and ``D_i = D(x_i; sigma_i)``. In lambda the PF-ODE reads
``dx/dlambda = D(x; sigma) - x``, whose variation-of-constants solution over one step is (DPM-Solver++, Lu et al.
2022, arXiv 2211.01095, eq. 8 with alpha = 1)

    x_{i+1} = e^{-h} x_i + int_0^h e^{-(h - tau)} D(lambda_i + tau) dtau.

Expanding D in a Taylor series in lambda about lambda_i turns the integral into ``sum_k w_k(h) D^(k)_i`` with the
exponential-integrator weights (``phi_k`` functions)

    w_k(h) = int_0^h e^{-(h - tau)} tau^k / k! dtau = h^{k+1} phi_{k+1}(-h),  w_0 = 1 - e^{-h},  w_k = h^k/k! - w_{k-1},

and the solvers below differ only in how they estimate the derivatives ``D^(k)`` from past denoiser outputs.
iPNDM instead integrates ``dx/dsigma = (x - D)/sigma`` (EDM eq. 3) with Adams-Bashforth weights.

**Last step, the same for every sampler here (and for ``euler``):** ``sigmas`` ends in 0, and the step from the
last positive sigma to 0 returns the last denoiser output ``D(x_{n-1}; sigma_{n-1})``. This is the h -> inf limit of
every data-prediction update above (e^{-h} -> 0, w_0 -> 1, the Taylor terms are dropped) and Euler's step to 0; it is
also k-diffusion's ``sample_dpmpp_2m``. So ``len(sigmas) - 1`` steps make exactly ``len(sigmas) - 1`` network calls
(NFE = number of steps, the last call counted) and the exact reference for a grid is the PF-ODE solved to the last
positive sigma followed by one denoising call there.

**Order schedule:** step ``i`` of ``n`` uses order ``min(order, i + 1)`` (warm-up while the history fills); with
fewer than 10 steps also at most ``n - i`` (DPM-Solver's and UniPC's ``lower_order_final``: the step before the
denoising step is at most 2nd order, the one before that at most 3rd). iPNDM lowers its order only for warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .registry import Callback, Denoise, Noise, SamplerSpec, one_call_per_step, register, step_info

# Below this step size the weights w_k come from their power series (the recursion cancels).
_SERIES_BELOW = 0.5


def lambdas(sigmas: Tensor) -> list[float]:
    """``lambda_i = -ln sigma_i`` for the positive sigmas of a grid, as host floats (the trailing 0 is left out)."""
    return [-math.log(s) for s in sigmas.tolist() if s > 0]


def phi_weights(h: float, n: int) -> list[float]:
    """``[w_0(h), ..., w_{n-1}(h)]`` with ``w_k(h) = int_0^h e^{-(h-tau)} tau^k/k! dtau = h^{k+1} phi_{k+1}(-h)``.

    Large h: ``w_0 = -expm1(-h)`` and ``w_k = h^k/k! - w_{k-1}`` (integration by parts). Small h: the series
    ``w_k = sum_j (-1)^j h^{k+1+j} / (k+1+j)!``, free of the recursion's cancellation.
    """
    if h < _SERIES_BELOW:
        return [sum((-1) ** j * h ** (k + 1 + j) / math.factorial(k + 1 + j) for j in range(30)) for k in range(n)]
    out = [-math.expm1(-h)]
    for k in range(1, n):
        out.append(h**k / math.factorial(k) - out[-1])
    return out


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float]:
    """Solve the small dense system ``rows @ a = rhs`` in float64."""
    a = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return a.tolist()


# Below this many steps the last steps use lower orders (DPM-Solver's ``lower_order_final`` threshold).
LOWER_ORDER_FINAL_BELOW = 10


def _order(order: int, i: int, n_steps: int) -> int:
    """Order of step ``i`` of ``n_steps``: warm-up and lower-order final steps (see the module docstring)."""
    final = n_steps - i if n_steps < LOWER_ORDER_FINAL_BELOW else order
    return max(1, min(order, i + 1, final))


@torch.no_grad()
def ddim(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
         callback: Callback = None) -> Tensor:
    """DDIM = DPM-Solver++(1), the 1st-order data-prediction exponential integrator:
    ``x_{i+1} = e^{-h} x_i + (1 - e^{-h}) D_i = (sigma_{i+1}/sigma_i) x_i + (1 - sigma_{i+1}/sigma_i) D_i``.

    With s = 1 this is algebraically Euler's step in sigma. NFE = len(sigmas) - 1.
    """
    return dpmpp_multistep(denoiser, x, sigmas, noise=noise, callback=callback, order=1)


@torch.no_grad()
def dpmpp_multistep(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
                    callback: Callback = None, order: int = 2) -> Tensor:
    """DPM-Solver++(kM), data prediction, multistep (Lu et al. 2022, arXiv 2211.01095), k = ``order`` in 1..3.

    Per step ``x_{i+1} = e^{-h} x_i + w_0 D_i + correction``, with ``r = h_{i-1}/h_i`` and divided differences
    ``f01 = (D_i - D_{i-1})/h_{i-1}``, ``f012 = (f01 - f12)/(h_{i-1} + h_{i-2})``:

    * 1st order: no correction (DDIM);
    * 2nd order (their Algorithm 2): ``w_0 (D_i - D_{i-1}) / (2 r)``;
    * 3rd order (Taylor form): ``w_1 D'_i + w_2 D''_i`` with ``D' = f01 + h_{i-1} f012`` and ``D'' = 2 f012``, the
      derivatives at lambda_i of the quadratic through the last three outputs.

    Deliberate difference: DPM-Solver's and k-diffusion's 3M weight the second divided difference by ``w_2/h^2``
    (``phi_3``), half of the Taylor weight ``2 w_2/h^2`` used here; with theirs the error falls at 2nd order on exact
    scores, with ours at 3rd (tests/test_multistep.py). The 1st-order warm-up step leaves an O(h^2) term proportional
    to dD/dlambda at sigma_max, negligible from sigma_max = 80.
    """
    sig, lam = sigmas.tolist(), lambdas(sigmas)
    n_steps = len(sig) - 1
    history: list[Tensor] = []
    for i in range(n_steps):
        denoised = denoiser(x, sigmas[i])
        history = [denoised, *history[:2]]
        if sig[i + 1] == 0:  # the step to sigma = 0 is the denoised output (module docstring)
            x = denoised
        else:
            x = _dpmpp_update(x, history, lam[max(0, i - 2):i + 2][::-1], _order(order, i, n_steps))
        step_info(callback, i=i, x=x, sigma=sigmas[i], denoised=denoised)
    return x


def _dpmpp_update(x: Tensor, d: Sequence[Tensor], lam: Sequence[float], order: int) -> Tensor:
    """One DPM-Solver++ step; ``d = [D_i, D_{i-1}, ...]``, ``lam = [lambda_{i+1}, lambda_i, lambda_{i-1}, ...]``."""
    h = lam[0] - lam[1]
    w = phi_weights(h, 3)
    x = math.exp(-h) * x + w[0] * d[0]
    if order == 2:
        r = (lam[1] - lam[2]) / h
        x = x + (w[0] / (2 * r)) * (d[0] - d[1])
    elif order >= 3:
        h1, h2 = lam[1] - lam[2], lam[2] - lam[3]
        f01, f12 = (d[0] - d[1]) / h1, (d[1] - d[2]) / h2
        f012 = (f01 - f12) / (h1 + h2)
        x = x + w[1] * (f01 + h1 * f012) + (2 * w[2]) * f012
    return x


def dpmpp_2m(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
             callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M): ``dpmpp_multistep`` with order 2 (k-diffusion's ``sample_dpmpp_2m``)."""
    return dpmpp_multistep(denoiser, x, sigmas, noise=noise, callback=callback, order=2)


def dpmpp_3m(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
             callback: Callback = None) -> Tensor:
    """DPM-Solver++(3M): ``dpmpp_multistep`` with order 3."""
    return dpmpp_multistep(denoiser, x, sigmas, noise=noise, callback=callback, order=3)


def unipc_coefficients(h: float, rs: Sequence[float]) -> list[float]:
    """UniPC's ``a`` for B(h) = w_0(h) = 1 - e^{-h} ("bh2") and nodes ``rs`` (Zhao et al. 2023, arXiv 2302.04867).

    Matching ``B(h) sum_m a_m (D(lambda_i + r_m h) - D_i) / r_m`` to ``sum_{k=1..p} w_k(h) D^(k)`` term by term gives
    ``sum_m a_m r_m^{k-1} = k! w_k(h) / (h^k B(h))`` for k = 1..p, p = len(rs). With a single node the solution
    ``w_1/(h B) = 1/2 + O(h)`` is replaced by its limit 1/2, as UniPC does (same order; UniP-2 is then exactly
    DPM-Solver++(2M)).
    """
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
    """UniPC, bh2 variant, data prediction (Zhao et al. 2023): UniP-p predictor + UniC-p corrector, one call per step.

    Step i -> i+1 at order p: the predictor uses the p-1 previous outputs (nodes ``r_m = (lambda_{i-m} - lambda_i)/h``)
    to give ``x~_{i+1}``; the single call ``D~_{i+1} = D(x~_{i+1}; sigma_{i+1})`` then feeds the corrector, which
    recomputes the step with the extra node r = 1, and is reused as the next step's D_{i+1}. The step landing on the
    last positive sigma has no corrector (its call is the final denoising output), so NFE = number of steps.
    UniC raises the predictor's order p by one; with the UniC-1 warm-up step the method is at least 3rd order.
    """
    sig, lam = sigmas.tolist(), lambdas(sigmas)
    n_steps = len(sig) - 1
    hist: list[Tensor] = [denoiser(x, sigmas[0])]
    for i in range(n_steps):
        denoised = hist[0]
        if sig[i + 1] == 0:
            x = denoised
        else:
            p = _order(order, i, n_steps)
            h = lam[i + 1] - lam[i]
            rs = [(lam[i - m] - lam[i]) / h for m in range(1, p)]
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
    """iPNDM (Zhang & Chen 2023, DEIS arXiv 2204.13902; as in diff-sampler): Adams-Bashforth on the PF-ODE in sigma,
    ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) sum_j c^(p)_j d_{i-j}`` with ``d_j = (x_j - D_j)/sigma_j`` and the
    equal-step AB weights ``c^(p)`` of order ``p = min(order, i + 1)`` (order <= 4). The step to sigma = 0 is the
    denoised output, as for every sampler here (Euler's step to 0). The weights assume equal steps, so on a non-uniform
    schedule the method is a 2nd-order scheme with small higher-order error constants, not a 4th-order one.
    """
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
register(SamplerSpec("dpmpp-2m", dpmpp_2m, one_call_per_step,
                     "DPM-Solver++(2M): 2nd-order multistep, data prediction, in lambda = -ln sigma",
                     schedule="logsnr"))
register(SamplerSpec("dpmpp-3m", dpmpp_3m, one_call_per_step,
                     "DPM-Solver++(3M): 3rd-order multistep, data prediction, in lambda = -ln sigma",
                     schedule="logsnr"))
register(SamplerSpec("unipc", unipc, one_call_per_step,
                     "UniPC (bh2, data prediction) predictor-corrector, order up to 3 (option order=1..3)",
                     schedule="logsnr", hyper={"order": 3}))
register(SamplerSpec("ipndm", ipndm, one_call_per_step,
                     "iPNDM: Adams-Bashforth on the PF-ODE in sigma, order up to 4 (option order=1..4)",
                     hyper={"order": 4}))
