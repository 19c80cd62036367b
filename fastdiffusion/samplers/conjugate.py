"""Conjugate integrators (Pandey, Rudolph & Mandt 2024, arXiv 2310.07894) for linear PF-ODEs, and lambda-DDIM.

A process hands the core its PF-ODE ``dz/dt = Fbar(t) z + H(t) y`` (``LinearPFODE``: k×k blocks per pixel, y the
network output); for a matrix B(t), one network call makes the conjugate Euler step ``z_{i+1} = P_i z_i + Q_i y_i``.
B = 0 is DDIM step by step, B = lam I is lambda-DDIM. Derivation of P and Q, the EDM family in time t = sigma and the
choice of time variable: docs/samplers.md, "Conjugate integrators".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..processes.base import LinearPFODE
from ..processes.edm import EDM_PF_ODE
from .registry import Callback, Denoise, Noise, SamplerSpec, one_call_per_step, register, step_info

Matrix = tuple[tuple[float, ...], ...]



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
    """P_i, Q_i on ``ts`` for B = ``b`` (float: ``b I``); closed form if the ODE has one and method="closed"; cached."""
    if not isinstance(b, TimeVarying):
        arr = np.asarray(b, dtype=np.float64)
        arr = float(arr) * np.eye(ode.k) if arr.ndim == 0 else arr.reshape(ode.k, ode.k)
        b = tuple(tuple(float(v) for v in row) for row in arr)
    if method not in ("closed", "quadrature"):
        raise ValueError(f"method must be 'closed' or 'quadrature', got {method!r}")
    return _coefficients(ode, tuple(float(t) for t in ts), b, method)


def conjugate_step(coef: ConjugateCoefficients, i: int, z: Tensor, y: Tensor,
                   apply: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """One conjugate Euler step ``z_{i+1} = P_i z_i + Q_i y_i``; ``apply(m, z)`` applies a (k, k) block to a state
    (PSLD's ``apply_block``), by default the 1×1 blocks of the EDM family."""
    if apply is None:
        return float(coef.P[i][0, 0]) * z + float(coef.Q[i][0, 0]) * y
    return apply(coef.P[i], z) + apply(coef.Q[i], y)


# -- the EDM family in EDM time t = sigma, noise prediction ---------------------------------------------------------
def tuned_lambda(nfe: int, table: dict[int, float]) -> float:
    """lambda for ``nfe`` from a per-NFE ``table``: linear in ln(NFE) between entries, the nearest entry outside."""
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
                callback: Callback = None, lam: float = 0.0) -> Tensor:
    """lambda-DDIM: ``x_{i+1} = P_i x_i + Q_i eps_i``, ``eps_i = (x_i - D_i)/sigma_i``, B = lam I."""
    sig = sigmas.tolist()
    n_steps = len(sig) - 1
    lam = float(lam)
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
                     "conjugate integrator with B = lam I (Pandey et al. 2024) in EDM time; lam = 0 (DDIM) unless "
                     "given or fitted to the model (`fastdiffusion tune --sampler lambda-ddim`)",
                     hyper={"lam": 0.0}))
register(SamplerSpec("conjugate-ddim", conjugate_ddim, one_call_per_step,
                     "conjugate integrator with B = 0: DDIM step by step, through the conjugate core"))
