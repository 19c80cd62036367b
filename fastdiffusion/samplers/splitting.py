"""PSLD samplers in the augmented space z = (x, m): Euler-Maruyama, SSCS, splitting and conjugate integrators.

Signature (the sampler signature of the EDM family, with times for sigmas)::

    fn(model, z, ts, *, noise, callback, **hyper) -> z

``model(z, t)`` is a PSLD ε-network (``model.process`` is its ``PSLD``), ``z`` the prior state at ``ts[0]`` (shape
(N, 2C, ...)), ``ts`` decreasing times T = ts[0] > ... > ts[-2] = eval_eps > ts[-1] = 0 (float64), and ``noise(z)``
draws fresh standard normals shaped like ``z``. Every coefficient comes from the process (``F = β/2 F̃``,
``K = β/2 D̃ L_t^{-T}``, kernels and exact sub-flows): the PF-ODE is ``dz/dt = F z + K ε`` and the reverse process
with noise Λ G is ``dz = (F z + (I + Λ²) K ε) dt + Λ G dW̄`` (``PSLD.reverse_drift``). Steps go t → t' = t − h.

**Last step (all samplers):** the interval from eval_eps to 0 is one Euler step of the sampler's own reverse process
without noise, ``z ← z − t·drift_Λ(z, ε(z, t), t)`` (Λ = 0 for deterministic samplers; the reference's last-step
denoising), and it costs 1 NFE. So a 1-NFE-per-step sampler on ``n + 1`` times makes ``n`` calls, and the exact
reference of a deterministic sampler is the PF-ODE solved to eval_eps followed by that same step.

The splitting samplers follow the names of Pandey, Rudolph & Mandt (arXiv 2310.07894); its update equations were not
available here, so each rule below is derived from the PSLD SDE and documented where it is defined, with its order
as measured on exact Gaussian-mixture scores (tests/test_splitting.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from ..processes.psld import PSLD, apply_block, cholesky2, join, split
from .registry import SamplerSpec, one_call_per_step, register

EpsModel = Callable[[Tensor, Tensor], Tensor]
Noise = Callable[[Tensor], Tensor] | None
Callback = Callable[[dict], None] | None


def _info(callback: Callback, **info: object) -> None:
    if callback is not None:
        callback(info)


def _process(model: EpsModel) -> PSLD:
    process = getattr(model, "process", None)
    if getattr(process, "family", None) != "psld":
        raise UserError("PSLD samplers need a PSLD model (one whose .process is a PSLD process)")
    return process


def _randn(noise: Noise, z: Tensor) -> Tensor:
    return (noise or torch.randn_like)(z)


def _steps(ts: Tensor) -> list[tuple[Tensor, Tensor]]:
    return list(zip(ts[:-1], ts[1:], strict=True))


def final_step(model: EpsModel, z: Tensor, t: Tensor, noise_x: float = 0.0, noise_m: float = 0.0) -> Tensor:
    """The last step t → 0: ``z − t · drift_Λ(z, ε(z, t), t)`` with no noise (1 NFE)."""
    process = model.process
    return z - t * process.reverse_drift(z, model(z, t), t, noise_x, noise_m)


def _row(a: Tensor, z: Tensor, row: int) -> Tensor:
    """Row ``row`` (0: x, 1: m) of the block ``a`` applied to z: a[row, 0] x + a[row, 1] m."""
    return split(apply_block(a, z))[row]


# -- baselines --------------------------------------------------------------------------------------------------
@torch.no_grad()
def em(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None) -> Tensor:
    """Euler-Maruyama on the reverse SDE (PSLD eq. 11): z' = z − h (F z + 2 K ε) + √h G n.
    1 NFE per step, weak order 1."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, 1.0, 1.0)
        h = t - t_next
        eps = model(z, t)
        z = z - h * p.reverse_sde_drift(z, eps, t) + h.sqrt() * apply_block(p.diffusion_matrix(t), _randn(noise, z))
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


def _ou_step(p: PSLD, z: Tensor, t_from: Tensor, t_to: Tensor, noise: Noise) -> Tensor:
    mean, cov = p.reverse_ou(t_from, t_to)
    return apply_block(mean, z) + apply_block(cholesky2(cov), _randn(noise, z))


@torch.no_grad()
def sscs(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None) -> Tensor:
    """Symmetric splitting (SSCS, Dockhorn et al. 2022; PSLD eq. 12): the reverse SDE is split into the linear SDE
    ``dz = β/2 (Q̃ − D̃) H z dτ + G dW̄``, solved exactly (``PSLD.reverse_ou``), and the score part
    ``dz/dτ = β D̃ (H z + s)``, one Euler step. Each step is exact(h/2) → score(h) at the midpoint time t − h/2 →
    exact(h/2). 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, 1.0, 1.0)
        h, t_mid = t - t_next, (t + t_next) / 2
        z = _ou_step(p, z, t, t_mid, noise)
        eps = model(z, t_mid)
        z = z + h * (apply_block(p.score_split_matrix(t_mid), z) - 2 * apply_block(p.eps_matrix(t_mid), eps))
        z = _ou_step(p, z, t_mid, t_next, noise)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


# -- deterministic splitting of the PF-ODE into momentum (m) and position (x) updates ------------------------------
def _kick(p: PSLD, z: Tensor, eps: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """m ← m − h f_m(x, m, ε, t), x fixed: f_m = β/2 (−x − ν m + Mν ℓ₂₂ ε_m) (the m row of F z + K ε)."""
    x, m = split(z)
    return join(x, m - h * _row(p.drift_matrix(t), z, 1) - h * _row(p.eps_matrix(t), eps, 1))


def _drift(p: PSLD, z: Tensor, eps: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """x ← x − h f_x(x, m, ε, t), m fixed: f_x = β/2 (−Γ x + M⁻¹ m + Γ (ℓ₁₁ ε_x + ℓ₁₂ ε_m))."""
    x, m = split(z)
    return join(x - h * _row(p.drift_matrix(t), z, 0) - h * _row(p.eps_matrix(t), eps, 0), m)


@torch.no_grad()
def nse(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None) -> Tensor:
    """Naive symplectic Euler on the PF-ODE: m' = m − h f_m(x, m, ε(x, m, t)); x' = x − h f_x(x, m', ε(x, m', t)).
    2 NFE per step (plus 1 for the last step), order 1."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h = t - t_next
        z = _kick(p, z, model(z, t), t, h)
        eps = model(z, t)
        z = _drift(p, z, eps, t, h)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def rse(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None) -> Tensor:
    """Reduced symplectic Euler: NSE with one ε per step, ε = ε(x, m, t) serving both updates:
    m' = m − h f_m(x, m, ε); x' = x − h f_x(x, m', ε). 1 NFE per step, order 1."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h = t - t_next
        eps = model(z, t)
        z = _drift(p, _kick(p, z, eps, t, h), eps, t, h)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def nvv(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None) -> Tensor:
    """Naive velocity Verlet (kick-drift-kick) with a fresh ε for every sub-update:
    m_½ = m − h/2 f_m(x, m, ε(x, m, t)); x' = x − h f_x(x, m_½, ε(x, m_½, t − h/2));
    m' = m_½ − h/2 f_m(x', m_½, ε(x', m_½, t')). 3 NFE per step (plus 1 for the last step).
    Order 1: f_x depends on x and f_m on m (through ε and the friction), so the kicks are not exact sub-flows."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h, t_mid = t - t_next, (t + t_next) / 2
        z = _kick(p, z, model(z, t), t, h / 2)
        z = _drift(p, z, model(z, t_mid), t_mid, h)
        eps = model(z, t_next)
        z = _kick(p, z, eps, t_next, h / 2)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def rvv(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None) -> Tensor:
    """Reduced velocity Verlet: kick-drift-kick with one ε = ε(x, m, t) per step, the linear terms of each
    sub-update taken at the already-updated state and the sub-update's own time:
    m_½ = m − h/2 f_m(x, m, ε; t); x' = x − h f_x(x, m_½, ε; t − h/2); m' = m_½ − h/2 f_m(x', m_½, ε; t').
    1 NFE per step, order 1."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h, t_mid = t - t_next, (t + t_next) / 2
        eps = model(z, t)
        z = _kick(p, z, eps, t, h / 2)
        z = _drift(p, z, eps, t_mid, h)
        z = _kick(p, z, eps, t_next, h / 2)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


# -- stochastic splitting: O (exact friction + noise), B (momentum), A (position) ------------------------------------
def _o_step(p: PSLD, z: Tensor, t: Tensor, t_next: Tensor, lam_s: float, noise: Noise) -> Tensor:
    decay, var = p.friction_flow(t, t_next, lam_s, 1.0)
    return apply_block(decay, z) + apply_block(var.sqrt(), _randn(noise, z))


def _gained_k(p: PSLD, t: Tensor, lam_s: float) -> Tensor:
    """(I + Λ²) K with Λ = diag(λ_s, 1)."""
    k = p.eps_matrix(t)
    return torch.diag(torch.tensor([1 + lam_s**2, 2.0], dtype=torch.float64, device=k.device)) @ k


def _b_step(p: PSLD, z: Tensor, eps: Tensor, t: Tensor, h: Tensor, lam_s: float) -> Tensor:
    """m ← m + h [W z − (I + Λ²) K ε]_m."""
    x, m = split(z)
    return join(x, m + h * (_row(p.hamiltonian_matrix(t, lam_s), z, 1) - _row(_gained_k(p, t, lam_s), eps, 1)))


def _a_step(p: PSLD, z: Tensor, eps: Tensor, t: Tensor, h: Tensor, lam_s: float) -> Tensor:
    """x ← x + h [W z − (I + Λ²) K ε]_x."""
    x, m = split(z)
    return join(x + h * (_row(p.hamiltonian_matrix(t, lam_s), z, 0) - _row(_gained_k(p, t, lam_s), eps, 0)), m)


@torch.no_grad()
def noba(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
         lam_s: float = 1.0) -> Tensor:
    """Naive OBA on the reverse process with noise Λ G, Λ = diag(λ_s, 1) (marginals p_t for every λ_s): per step
    O: the exact Ornstein-Uhlenbeck part ``dz = −β/2 Λ² D̃ H z dτ + Λ G dW̄`` (``PSLD.friction_flow``) over [t', t];
    B: m ← m + h [W z − (I + Λ²) K ε]_m with ε = ε(z, t'); A: x ← x + h [W z − (I + Λ²) K ε]_x with a fresh
    ε(z, t') (W = ``PSLD.hamiltonian_matrix``). λ_s scales the noise injected in x (λ_s = 1: the reverse SDE).
    2 NFE per step (plus 1 for the last step)."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        h = t - t_next
        z = _o_step(p, z, t, t_next, lam_s, noise)
        z = _b_step(p, z, model(z, t_next), t_next, h, lam_s)
        eps = model(z, t_next)
        z = _a_step(p, z, eps, t_next, h, lam_s)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def roba(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
         lam_s: float = 1.0) -> Tensor:
    """Reduced OBA: NOBA with one ε = ε(z, t') per step, evaluated after O and shared by B and A. 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        h = t - t_next
        z = _o_step(p, z, t, t_next, lam_s, noise)
        eps = model(z, t_next)
        z = _a_step(p, _b_step(p, z, eps, t_next, h, lam_s), eps, t_next, h, lam_s)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


# -- conjugate integrators (λ-DDIM with B = λ 1 on the PSLD PF-ODE) -------------------------------------------------
_GL_NODES = 24


def conjugate_coefficients(p: PSLD, t: Tensor, t_next: Tensor, lam: float, precondition: float = 0.0
                           ) -> tuple[Tensor, Tensor]:
    """(P, Q), each (n, 2, 2), of the conjugate Euler step ``z' = P z + Q ε`` for steps t → t_next (tensors (n,)).

    The score is written ``s = C_skip z + C_out ε̄`` with C_out = −L_t^{-T} and C_skip = −κ H (κ = ``precondition``:
    0 is the plain ε parameterisation, 1 takes out the stationary score −H z, so ε̄ = ε − κ L_tᵀ H z). With
    F̄ = F − ½ G Gᵀ C_skip = β/2 (F̃ + κ D̃ H) and B_t = λ β(t)/2 · 1 (1 the all-ones 2×2 block; for constant β this is
    B = λβ/2 · 1), ẑ = A_t z with dA/dt = A (B − F̄) = A β/2 X, X = λ 1 − F̃ − κ D̃ H, so
    A_t⁻¹ A_s = exp((b(s) − b(t)) X / 2). Euler on ``dẑ/dt = A B A⁻¹ ẑ + A K ε̄`` from t to t' gives

        z' = E (I − h B_t) z − [∫_{t'}^{t} exp((b(s) − b(t')) X/2) K_s ds] ε̄,   E = exp((b(t) − b(t')) X/2),

    the integral by Gauss-Legendre quadrature in ln s (K_s ~ s^{-1/2} near 0). λ = 0, κ = 0 is the exponential
    integrator (DEIS-1 / "DDIM" in ε form).
    """
    t, t_next = t.double(), t_next.double()
    dev = t.device
    x_mat = lam * torch.ones(2, 2, dtype=torch.float64, device=dev) - p.F_tilde(dev) - precondition * (
        p.D_tilde(dev) @ p.H(dev))
    e = torch.linalg.matrix_exp((p.b(t) - p.b(t_next))[:, None, None] / 2 * x_mat)
    h = (t - t_next)[:, None, None]
    b_t = lam * p.beta(t)[:, None, None] / 2 * torch.ones(2, 2, dtype=torch.float64, device=dev)
    nodes, weights = _gauss_legendre(_GL_NODES, dev)
    lo, hi = t_next.log()[:, None], t.log()[:, None]
    s = (lo + (hi - lo) * (nodes + 1) / 2).exp()  # (n, nodes)
    w = (hi - lo) / 2 * weights * s
    flow = torch.linalg.matrix_exp((p.b(s) - p.b(t_next)[:, None])[..., None, None] / 2 * x_mat)
    integral = (w[..., None, None] * flow @ p.eps_matrix(s)).sum(1)
    big_p = e @ (torch.eye(2, dtype=torch.float64, device=dev) - h * b_t)
    r = -precondition * cholesky2(p.kernel_cov(t)).transpose(-1, -2) @ p.H(dev)
    return big_p - integral @ r, -integral


def _gauss_legendre(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return (torch.tensor(x, dtype=torch.float64, device=device), torch.tensor(w, dtype=torch.float64, device=device))


@torch.no_grad()
def psld_conj(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
              lam: float = 0.0, precondition: float = 0.0) -> Tensor:
    """Conjugate integrator on the PSLD PF-ODE (λ-DDIM with B = λ β/2 · 1, see ``conjugate_coefficients``).
    1 NFE per step, order 1."""
    p = _process(model)
    body = ts[:-1][ts[1:] > 0]
    coef_p, coef_q = conjugate_coefficients(p, body, ts[1:len(body) + 1], lam, precondition)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        eps = model(z, t)
        z = apply_block(coef_p[i], z) + apply_block(coef_q[i], eps)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


def _every(k: int, name: str) -> Callable[[int], int]:
    """NFE rule of samplers with ``k`` calls per step and 1 for the last step: nfe = k (n − 1) + 1."""

    def steps(nfe: int) -> int:
        if (nfe - 1) % k:
            raise UserError(f"{name} makes {k} network calls per step and 1 for the last step: use an --nfe of "
                            f"the form {k}n+1 (e.g. {nfe - (nfe - 1) % k} or {nfe - (nfe - 1) % k + k})")
        return (nfe - 1) // k + 1

    return steps


def _psld(name: str, fn: Callable, steps: Callable[[int], int], help: str, **kw: object) -> None:
    register(SamplerSpec(name, fn, steps, help, family="psld", **kw))


_psld("em", em, one_call_per_step, "PSLD: Euler-Maruyama on the reverse SDE", schedule="quadratic", stochastic=True)
_psld("sscs", sscs, one_call_per_step, "PSLD: symmetric splitting CLD sampler (exact OU + Euler score)",
      schedule="quadratic", stochastic=True)
_psld("nse", nse, _every(2, "nse"), "PSLD: naive symplectic Euler on the PF-ODE (2 NFE/step)", schedule="quadratic")
_psld("rse", rse, one_call_per_step, "PSLD: reduced symplectic Euler on the PF-ODE", schedule="quadratic")
_psld("nvv", nvv, _every(3, "nvv"), "PSLD: naive velocity Verlet on the PF-ODE (3 NFE/step)", schedule="quadratic")
_psld("rvv", rvv, one_call_per_step, "PSLD: reduced velocity Verlet on the PF-ODE", schedule="quadratic")
_psld("noba", noba, _every(2, "noba"), "PSLD: naive OBA splitting of the reverse SDE (2 NFE/step)",
      schedule="quadratic", stochastic=True, hyper={"lam_s": 1.0})
_psld("roba", roba, one_call_per_step, "PSLD: reduced OBA splitting of the reverse SDE", schedule="quadratic",
      stochastic=True, hyper={"lam_s": 1.0})
_psld("psld-conj", psld_conj, one_call_per_step, "PSLD: conjugate integrator (lambda-DDIM, B = lam 1) on the PF-ODE",
      schedule="quadratic", hyper={"lam": 0.0, "precondition": 0.0})

__all__ = ["conjugate_coefficients", "em", "final_step", "noba", "nse", "nvv", "psld_conj", "roba", "rse",
           "rvv", "sscs"]
