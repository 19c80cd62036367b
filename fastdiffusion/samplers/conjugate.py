"""Conjugate integrators (Pandey, Rudolph & Mandt 2024, arXiv 2310.07894) for linear diffusions, and lambda-DDIM.

**The framework, for any process with k×k coefficient blocks acting per pixel** (k = 1 for the EDM family, 2 for
PSLD's (x, m) pairs). With the network output y written into the score as ``s = C_skip z + C_out y``, the PF-ODE of
``dz = F z dt + G dW`` is linear in z and y:

    dz/dt = Fbar(t) z + H(t) y,     Fbar = F - 1/2 G G^T C_skip,    H = -1/2 G G^T C_out.

Pick a k×k matrix function B(t) and let A solve ``dA/dt = A (B - Fbar)``. Then ``zhat = A z`` obeys

    dzhat/dt = A B A^{-1} zhat + Phi'(t) y,     Phi(t) = int A(s) H(s) ds,

and one Euler step on zhat with y frozen (one network call), t_i -> t_{i+1}, is, back in z,

    z_{i+1} = P_i z_i + Q_i y_i,   P_i = A_{i+1}^{-1} A_i (I + (t_{i+1} - t_i) B(t_i)),
                                   Q_i = A_{i+1}^{-1} (Phi_{i+1} - Phi_i).

P and Q do not depend on where A and Phi start, so each step integrates from ``A(t_i) = I, Phi(t_i) = 0``:
``P_i = A(t_{i+1})^{-1} (I + dt B(t_i))`` and ``Q_i = A(t_{i+1})^{-1} Phi(t_{i+1})``. With B = 0, P_i is the
transition matrix of Fbar and Q_i = int Psi(t_{i+1}, s) H(s) ds: the exponential integrator with y frozen (DDIM,
DPM-Solver-1, DEIS-0), step by step. B = lam I is lambda-DDIM.

**Function-level API** (what another process plugs into):

* ``LinearPFODE(fbar, gain, k, key, closed_form=None)``: the process side; ``fbar(t)`` and ``gain(t)`` return
  Fbar(t) and H(t) as (k, k) float64 arrays, ``key`` names the ODE for the cache, ``closed_form(ts, b)`` (optional)
  returns exact (P, Q) arrays for a constant B.
* ``phi_coefficients(ode, ts, b)``: ``ConjugateCoefficients`` (P, Q as (len(ts) - 1, k, k) float64 tensors) for the
  time grid ``ts``, from the closed form if there is one, else float64 quadrature (scipy DOP853, rtol 1e-12) of the
  (A, Phi) ODE on each interval; computed once per (ode, grid, B) and cached. ``b`` is a constant (k, k) matrix
  (nested tuples) or a ``TimeVarying(key, fn)`` for B(t).
* ``conjugate_step(coef, i, z, y, apply=apply_block)``: ``P_i z + Q_i y``; ``apply(m, z)`` applies a (k, k) block
  to a state (the default takes a tensor for k = 1 or a sequence of k tensors; PSLD passes its own ``apply_block``).

**The EDM family** (every process in sigma-space, s = 1) in EDM's own time t = sigma (Karras et al. 2022 pick
sigma(t) = t) is ``dx = sqrt(2t) dW``: F = 0, G G^T = 2t. With the noise prediction ``eps = (x - D(x; sigma))/sigma``
the score is ``-eps/sigma`` (C_skip = 0, C_out = -1/t), so Fbar = 0, H = 1 and ``dx/dsigma = eps`` (EDM eq. 3).
For B = lam (units 1/sigma): A = e^{lam t}, Phi = e^{lam t}/lam, and with h = sigma_i - sigma_{i+1} > 0

    P_i = e^{lam h} (1 - lam h),      Q_i = -(e^{lam h} - 1)/lam       (lam = 0: P = 1, Q = -h, Euler = DDIM).

The last step (to sigma = 0) returns the last denoiser output, as every EDM-family sampler here does
(``multistep`` module docstring), so NFE = number of steps.

Design choices: B is constant in the ODE's own time, so the time variable is part of the method. For the EDM family
we compared t = sigma, t = ln sigma and VP time, each with noise and data prediction, on Gaussian mixtures with exact
scores; t = sigma with noise prediction (closed form above) gave the lowest errors, about half of DDIM's at every
NFE with lam near -1/sigma_max. lam therefore has units of 1/sigma, and the tuned defaults assume sigma_max = 80.
A process whose H(t) is singular at an end of its grid (PSLD's ~ t^{-1/2} near t = 0) should hand the core a
reparameterised time (e.g. u = ln t, with Fbar and H multiplied by dt/du) so the quadrature stays smooth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .registry import Callback, Denoise, Noise, SamplerSpec, one_call_per_step, register, step_info

Matrix = tuple[tuple[float, ...], ...]

# lambda of lambda-DDIM per NFE, tuned for the karras schedule (rho = 7) on sigma in [0.002, 80] by
#   python -m fastdiffusion.bench.samplers --tune-lambda --out benchmarks/samplers
# (protocol: fastdiffusion/bench/samplers.py; every grid point: benchmarks/samplers/lambda_tuning.json). The optimum
# sits near lam sigma_max = -1 at every NFE and halves DDIM's endpoint error there. Between the listed NFEs lambda is
# interpolated linearly in ln(NFE); outside them the nearest entry is used.
LAMBDA_BY_NFE: dict[int, float] = {3: -0.014, 4: -0.006, 5: -0.011, 6: -0.011, 8: -0.012, 10: -0.012, 15: -0.012,
                                   20: -0.012, 35: -0.013, 50: -0.013, 100: -0.013}


@dataclass(frozen=True)
class LinearPFODE:
    """``dz/dt = fbar(t) z + gain(t) y`` with (k, k) blocks (module docstring); ``key`` identifies it in the cache."""

    fbar: Callable[[float], np.ndarray]
    gain: Callable[[float], np.ndarray]
    k: int
    key: Hashable
    closed_form: Callable[[Sequence[float], np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearPFODE) and self.key == other.key


@dataclass(frozen=True)
class TimeVarying:
    """A time-dependent B(t): ``fn(t)`` returns a (k, k) array; ``key`` identifies it in the cache."""

    key: Hashable
    fn: Callable[[float], np.ndarray]

    def __hash__(self) -> int:
        return hash(("TimeVarying", self.key))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimeVarying) and self.key == other.key


@dataclass(frozen=True)
class ConjugateCoefficients:
    """``z_{i+1} = P[i] z_i + Q[i] y_i``; P and Q are (n_steps, k, k) float64 tensors (treat them as read-only)."""

    P: Tensor
    Q: Tensor


def _b_at(b: Matrix | TimeVarying, t: float) -> np.ndarray:
    return np.asarray(b.fn(t) if isinstance(b, TimeVarying) else b, dtype=np.float64)


def _interval_by_quadrature(ode: LinearPFODE, b: Matrix | TimeVarying, t0: float, t1: float
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(P, Q) of one step t0 -> t1: integrate ``A' = A (B - Fbar)``, ``Phi' = A H`` from A = I, Phi = 0 (float64)."""
    from scipy.integrate import solve_ivp

    k = ode.k

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        a = y[:k * k].reshape(k, k)
        da = a @ (_b_at(b, t) - np.asarray(ode.fbar(t), dtype=np.float64))
        dphi = a @ np.asarray(ode.gain(t), dtype=np.float64)
        return np.concatenate([da.ravel(), dphi.ravel()])

    y0 = np.concatenate([np.eye(k).ravel(), np.zeros(k * k)])
    sol = solve_ivp(rhs, (t0, t1), y0, method="DOP853", rtol=1e-12, atol=1e-14)
    if not sol.success:
        raise RuntimeError(f"conjugate coefficients: quadrature failed on [{t0}, {t1}]: {sol.message}")
    a1 = sol.y[:k * k, -1].reshape(k, k)
    phi1 = sol.y[k * k:, -1].reshape(k, k)
    a1_inv = np.linalg.inv(a1)
    return a1_inv @ (np.eye(k) + (t1 - t0) * _b_at(b, t0)), a1_inv @ phi1


@lru_cache(maxsize=256)
def _coefficients(ode: LinearPFODE, ts: tuple[float, ...], b: Matrix | TimeVarying, method: str
                  ) -> ConjugateCoefficients:
    if method == "closed" and ode.closed_form is not None and not isinstance(b, TimeVarying):
        p, q = ode.closed_form(ts, np.asarray(b, dtype=np.float64))
    else:
        pq = [_interval_by_quadrature(ode, b, t0, t1) for t0, t1 in zip(ts[:-1], ts[1:], strict=True)]
        p = np.stack([x[0] for x in pq]) if pq else np.zeros((0, ode.k, ode.k))
        q = np.stack([x[1] for x in pq]) if pq else np.zeros((0, ode.k, ode.k))
    return ConjugateCoefficients(torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64))


def phi_coefficients(ode: LinearPFODE, ts: Sequence[float], b: Matrix | TimeVarying | float,
                     method: str = "closed") -> ConjugateCoefficients:
    """P, Q of the conjugate Euler steps on the grid ``ts`` for B = ``b`` (module docstring); cached.

    ``b``: a (k, k) constant as nested sequences (a float is taken as ``b I``) or a ``TimeVarying``. ``method``:
    "closed" uses ``ode.closed_form`` where it exists (constant B), "quadrature" always integrates numerically.
    """
    if not isinstance(b, TimeVarying):
        arr = np.asarray(b, dtype=np.float64)
        arr = float(arr) * np.eye(ode.k) if arr.ndim == 0 else arr.reshape(ode.k, ode.k)
        b = tuple(tuple(float(v) for v in row) for row in arr)
    if method not in ("closed", "quadrature"):
        raise ValueError(f"method must be 'closed' or 'quadrature', got {method!r}")
    return _coefficients(ode, tuple(float(t) for t in ts), b, method)


def apply_block(m: Tensor, z: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
    """``(m ⊗ I) z`` for a (k, k) block ``m``: z is a tensor when k = 1, else a sequence of k tensors (block rows)."""
    rows = m.tolist()
    if isinstance(z, Tensor):
        return rows[0][0] * z
    return [sum(c * zc for c, zc in zip(row, z, strict=True)) for row in rows]


def conjugate_step(coef: ConjugateCoefficients, i: int, z: Tensor | Sequence[Tensor], y: Tensor | Sequence[Tensor],
                   apply: Callable = apply_block) -> Tensor | list[Tensor]:
    """One conjugate Euler step ``z_{i+1} = P_i z_i + Q_i y_i`` (``apply(m, z)`` applies a block to a state)."""
    pz, qy = apply(coef.P[i], z), apply(coef.Q[i], y)
    if isinstance(pz, Tensor):
        return pz + qy
    return [a + b for a, b in zip(pz, qy, strict=True)]


# -- the EDM family in EDM time t = sigma, noise prediction ---------------------------------------------------------
def _edm_closed_form(ts: Sequence[float], b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact P, Q for Fbar = 0, H = 1, B = lam: ``P = e^{-lam dt}(1 + lam dt)``, ``Q = -expm1(-lam dt)/lam``."""
    lam = float(b[0, 0])
    dt = np.diff(np.asarray(ts, dtype=np.float64))
    p = np.exp(-lam * dt) * (1 + lam * dt)
    q = -np.expm1(-lam * dt) / lam if lam != 0 else dt
    return p.reshape(-1, 1, 1), q.reshape(-1, 1, 1)


EDM_PF_ODE = LinearPFODE(fbar=lambda t: np.zeros((1, 1)), gain=lambda t: np.ones((1, 1)), k=1,
                         key="edm-sigma-time-eps", closed_form=_edm_closed_form)


def tuned_lambda(nfe: int, table: dict[int, float] | None = None) -> float:
    """lambda for ``nfe`` from ``LAMBDA_BY_NFE``: linear in ln(NFE) between entries, the nearest entry outside."""
    table = LAMBDA_BY_NFE if table is None else table
    keys = sorted(table)
    if nfe <= keys[0] or nfe >= keys[-1]:
        return table[keys[0] if nfe <= keys[0] else keys[-1]]
    hi = next(k for k in keys if k >= nfe)
    lo = max(k for k in keys if k <= nfe)
    if hi == lo:
        return table[lo]
    w = (math.log(nfe) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (1 - w) * table[lo] + w * table[hi]


@torch.no_grad()
def lambda_ddim(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
                callback: Callback = None, lam: float | None = None) -> Tensor:
    """lambda-DDIM: the conjugate integrator with B = lam on the EDM PF-ODE ``dx/dsigma = eps`` (module docstring),
    ``x_{i+1} = P_i x_i + Q_i eps_i`` with ``eps_i = (x_i - D_i)/sigma_i``; the step to sigma = 0 returns D.
    ``lam = None`` takes the tuned value for this NFE (``tuned_lambda``). NFE = len(sigmas) - 1.
    """
    sig = sigmas.tolist()
    n_steps = len(sig) - 1
    lam = tuned_lambda(n_steps) if lam is None else float(lam)
    body = [s for s in sig if s > 0]
    coef = phi_coefficients(EDM_PF_ODE, body, lam)
    for i in range(n_steps):
        denoised = denoiser(x, sigmas[i])
        if sig[i + 1] == 0:
            x = denoised
        else:
            x = conjugate_step(coef, i, x, (x - denoised) / sig[i])
        step_info(callback, i=i, x=x, sigma=sigmas[i], denoised=denoised)
    return x


def conjugate_ddim(denoiser: Denoise, x: Tensor, sigmas: Tensor, *, noise: Noise | None = None,
                   callback: Callback = None) -> Tensor:
    """The conjugate integrator with B = 0: exactly DDIM (= Euler in sigma for the EDM family), step by step."""
    return lambda_ddim(denoiser, x, sigmas, noise=noise, callback=callback, lam=0.0)


register(SamplerSpec("lambda-ddim", lambda_ddim, one_call_per_step,
                     "conjugate integrator with B = lam I (Pandey et al. 2024) in EDM time; lam tuned per NFE",
                     hyper={"lam": None}))
register(SamplerSpec("conjugate-ddim", conjugate_ddim, one_call_per_step,
                     "conjugate integrator with B = 0: DDIM step by step, through the conjugate core"))
