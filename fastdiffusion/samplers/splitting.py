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
as measured on exact Gaussian-mixture scores (tests/test_splitting.py):

============  =====  ==========================================================================  ==========
name          NFE/   update                                                                      order
              step
============  =====  ==========================================================================  ==========
em            1      Euler-Maruyama on the reverse SDE                                           weak 1
sscs          1      exact linear OU (h/2) · Euler score step (h) · exact OU (h/2)               —
nse           2      PF-ODE symplectic Euler: m-update, then x-update with a fresh ε             1
rse           1      nse with one ε per step                                                     1
nvv           3      PF-ODE velocity Verlet (kick-drift-kick), a fresh ε per sub-update          1
rvv           1      nvv with one ε per step, linear terms at the updated state and sub-time     1
noba          2      O (exact OU, noise λ_s in x) · B (m, fresh ε) · A (x, fresh ε)              —
roba, sps-s   1      noba with one ε per step; sps-s takes λ_s tuned per NFE                     —
psld-conj     1      conjugate Euler (λ-DDIM, B = λ 1), stationary preconditioning C_skip = −H   1
csps-d        1      psld-conj with ε̄ linear in time from the last two calls (two-step)          2 (λ = 0)
csps-s        1      O of roba, then the conjugate step of the rest of the reverse dynamics      —
============  =====  ==========================================================================  ==========

Design notes. (1) In the PF-ODE, ε enters the x-equation only through Γ-weighted terms, and near the stationary law
the score cancels the friction, leaving the rotation dx/dt = β/2 M⁻¹ m, dm/dt = −β/2 x (8 rad over t ∈ [0, 1]): the
reason symplectic (x, m) splitting beats plain Euler. (2) With C_skip = −H the conjugate frame integrates that
rotation exactly; symplectic-Euler and velocity-Verlet splittings of the conjugate step (row by row in ẑ, or of the
preconditioned rotation with exact ε̄ weights) were tried on exact scores and were no better than the unsplit step,
so CSPS-D keeps the exact linear flow and spends the splitting's second half-kick on a better ε̄ quadrature instead.
(3) Stochastic B/A Euler updates are taken at the start t of their interval: the m-equation's rate grows like
β ν M / Σ_mm(t) towards t = 0 and explicit steps evaluated at the interval's end blow up at low NFE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from ..processes.psld import PSLD, apply_block, cholesky2, join, split
from .conjugate import LinearPFODE, conjugate_step, phi_coefficients, tuned_lambda
from .registry import SamplerSpec, one_call_per_step, register

# Per-NFE defaults, tuned on mixtures kept apart from the benchmark's by
#   python -m fastdiffusion.bench.psld_samplers --tune --skip-bench --n 4000 --n-exact 300
# (protocol: fastdiffusion/bench/psld_samplers.py; scores in benchmarks/psld_samplers/tuning.json), for the default
# quadratic schedule on [eval_eps, T] of the reference PSLD constants. Between the listed NFEs the value is
# interpolated linearly in ln(NFE); outside them the nearest entry is used (``conjugate.tuned_lambda``).
PSLD_CONJ_LAMBDA: dict[int, float] = {10: -1.5, 20: -1.5, 50: -1.5, 100: -1.5, 200: -1.5}
CSPS_D_LAMBDA: dict[int, float] = {10: -1.0, 20: -0.5, 50: 0.0, 100: -0.25, 200: -0.25}
SPS_S_LAMBDA_S: dict[int, float] = {10: 3.0, 20: 5.0, 50: 7.0, 100: 5.0, 200: 5.0}
CSPS_S_LAMBDA_S: dict[int, float] = {10: 0.0, 20: 0.0, 50: 0.0, 100: 2.0, 200: 2.0}

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
    B: m ← m + h [W z − (I + Λ²) K ε]_m with ε = ε(z, t); A: x ← x + h [W z − (I + Λ²) K ε]_x with a fresh
    ε(z, t) (W = ``PSLD.hamiltonian_matrix``). λ_s scales the noise injected in x (λ_s = 1: the reverse SDE).
    B and A are Euler steps over [t', t] taken at its start t: at the end t' the m-equation is stiffest (its rate
    grows like β ν M / Σ_mm(t) as t → 0) and explicit steps evaluated there blow up at low NFE.
    2 NFE per step (plus 1 for the last step)."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        h = t - t_next
        z = _o_step(p, z, t, t_next, lam_s, noise)
        z = _b_step(p, z, model(z, t), t, h, lam_s)
        eps = model(z, t)
        z = _a_step(p, z, eps, t, h, lam_s)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def roba(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
         lam_s: float = 1.0) -> Tensor:
    """Reduced OBA: NOBA with one ε = ε(z, t) per step, evaluated after O and shared by B and A. 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        h = t - t_next
        z = _o_step(p, z, t, t_next, lam_s, noise)
        eps = model(z, t)
        z = _a_step(p, _b_step(p, z, eps, t, h, lam_s), eps, t, h, lam_s)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


# -- conjugate integrators (through the conjugate core, fastdiffusion.samplers.conjugate) ----------------------------
# The conjugate samplers write the score as s = C_skip z + C_out ε̄ with C_out = −L_t^{-T} and C_skip = −κ H
# (κ = ``precondition``: 0 is the plain ε parameterisation, 1 takes out the score −H z of the stationary law, so that
# ε̄ = ε − κ L_tᵀ H z is what the network adds to it). With a noise level Λ (Λ = 0: the PF-ODE) the reverse dynamics
# between network calls is then linear in z and ε̄:
#
#     dz/dt = F̄ z + (I + Λ²) K ε̄,   F̄ = β/2 X̃,   X̃ = −Q̃ H − (1 − κ)(I + Λ²) D̃ H
#
# (for Λ = 0, X̃ = F̃ + κ D̃ H; for κ = 1 it is the rotation −Q̃ H, exact for the stationary law). The core turns it
# into the conjugate Euler step z' = P z + Q ε̄ for a constant B.
_GL_NODES = 24


def _gain(p: PSLD, noise_x: float, noise_m: float, device: torch.device | None = None) -> Tensor:
    return torch.diag(torch.tensor([1 + noise_x**2, 1 + noise_m**2], dtype=torch.float64, device=device))


def _x_tilde(p: PSLD, precondition: float, noise_x: float = 0.0, noise_m: float = 0.0) -> Tensor:
    """X̃ = −Q̃ H − (1 − κ)(I + Λ²) D̃ H (see above)."""
    return -p.Q_tilde() @ p.H() - (1 - precondition) * _gain(p, noise_x, noise_m) @ p.D_tilde() @ p.H()


def _gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)


def _interval_weights(p: PSLD, t0: Tensor, t1: Tensor, b: Tensor, precondition: float, noise_x: float,
                      noise_m: float, moment: int = 0) -> Tensor:
    """−∫_{t1}^{t0} U(t1, s) (I + Λ²) K_s (s − t0)^moment ds for each step t0 → t1 (tensors (n,)), constant β, with
    U(t1, s) = exp((s − t1)(B − F̄)) the flow of dz/dt = (F̄ − B) z from s to t1; Gauss-Legendre in ln s
    (K_s ~ s^{-1/2} near 0)."""
    nodes, weights = _gauss_legendre(_GL_NODES)
    lo, hi = t1.log()[:, None], t0.log()[:, None]
    s = (lo + (hi - lo) * (nodes + 1) / 2).exp()  # (n, nodes)
    w = (hi - lo) / 2 * weights * s * (s - t0[:, None]) ** moment
    a = b - p.beta_min / 2 * _x_tilde(p, precondition, noise_x, noise_m)
    flow = torch.linalg.matrix_exp((s - t1[:, None])[..., None, None] * a)
    gain_k = _gain(p, noise_x, noise_m) @ p.eps_matrix(s)
    return -(w[..., None, None] * flow @ gain_k).sum(1)


def _closed_form(p: PSLD, precondition: float, noise_x: float, noise_m: float):
    """Exact (P, Q) for constant β: P = exp(h (B − F̄)) (I − h B), Q = ``_interval_weights`` (moment 0)."""

    def closed_form(ts, b):
        import numpy as np

        t = torch.tensor(np.asarray(ts, dtype=np.float64))
        t0, t1 = t[:-1], t[1:]
        bb = torch.as_tensor(np.asarray(b), dtype=torch.float64)
        h = (t0 - t1)[:, None, None]
        a = bb - p.beta_min / 2 * _x_tilde(p, precondition, noise_x, noise_m)
        big_p = torch.linalg.matrix_exp(h * a) @ (torch.eye(2, dtype=torch.float64) - h * bb)
        return big_p.numpy(), _interval_weights(p, t0, t1, bb, precondition, noise_x, noise_m).numpy()

    return closed_form


def linear_ode(p: PSLD, precondition: float = 1.0, noise_x: float = 0.0, noise_m: float = 0.0) -> LinearPFODE:
    """The conjugate core's description of ``dz/dt = F̄ z + (I + Λ²) K ε̄`` (see above) for this process: F̄ and the
    gain as 2×2 float64 arrays, and a closed form when β is constant."""

    def fbar(t: float):
        return (p.beta(t) / 2 * _x_tilde(p, precondition, noise_x, noise_m)).numpy()

    def gain(t: float):
        return (_gain(p, noise_x, noise_m) @ p.eps_matrix(t)).numpy()

    closed = _closed_form(p, precondition, noise_x, noise_m) if p.beta_min == p.beta_max else None
    key = ("psld", tuple(sorted(p.config().items())), precondition, noise_x, noise_m)
    return LinearPFODE(fbar=fbar, gain=gain, k=2, key=key, closed_form=closed)


def _eps_bar(p: PSLD, eps: Tensor, z: Tensor, t: Tensor, precondition: float) -> Tensor:
    """ε̄ = ε − κ L_tᵀ H z."""
    if precondition == 0:
        return eps
    return eps - precondition * apply_block(p.kernel_chol(t).transpose(-1, -2) @ p.H(t.device), z)


def _body(ts: Tensor) -> list[float]:
    return [float(t) for t in ts if t > 0]


def _ones(lam: float) -> list[list[float]]:
    """B = λ 1: λ times the all-ones 2×2 block (λ-DDIM-II)."""
    return [[lam, lam], [lam, lam]]


@torch.no_grad()
def psld_conj(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
              lam: float | None = None, precondition: float = 1.0) -> Tensor:
    """Conjugate integrator on the PSLD PF-ODE (λ-DDIM with B = λ 1, 1 the all-ones 2×2 block), one Euler step in
    ẑ = A_t z per network call: z' = P z + Q ε̄ with the core's P, Q for ``linear_ode(p, precondition)``.
    ``lam = None`` takes the value tuned for this NFE (``PSLD_CONJ_LAMBDA``). 1 NFE per step, order 1."""
    p = _process(model)
    lam = tuned_lambda(len(ts) - 1, PSLD_CONJ_LAMBDA) if lam is None else float(lam)
    coef = phi_coefficients(linear_ode(p, precondition), _body(ts), _ones(lam))
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        eps = model(z, t)
        z = conjugate_step(coef, i, z, _eps_bar(p, eps, z, t, precondition), apply=apply_block)
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def csps_d(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
           lam: float | None = None, precondition: float = 1.0) -> Tensor:
    """CSPS-D: the conjugate step of ``psld_conj`` with ε̄ integrated as a linear function of time, its slope taken
    from the last two calls (a two-step, Adams-Bashforth form of the velocity-Verlet half-kicks):

        z' = P z + Q ε̄_i + Q₁ (ε̄_i − ε̄_{i−1}) / (t_i − t_{i−1}),   Q₁ = −∫_{t'}^{t} U(t', s) K_s (s − t_i) ds,

    the first step without the slope term. Order 2 for λ = 0 (order 1 otherwise: the B term is an Euler step).
    1 NFE per step; needs a constant β (the moment weights use the closed form). ``lam = None``: tuned per NFE."""
    p = _process(model)
    if p.beta_min != p.beta_max:
        raise UserError("csps-d needs a constant beta (beta_min == beta_max); use psld-conj")
    lam = tuned_lambda(len(ts) - 1, CSPS_D_LAMBDA) if lam is None else float(lam)
    body = _body(ts)
    coef = phi_coefficients(linear_ode(p, precondition), body, _ones(lam))
    grid = torch.tensor(body, dtype=torch.float64)
    b = torch.tensor(_ones(lam), dtype=torch.float64)
    q1 = _interval_weights(p, grid[:-1], grid[1:], b, precondition, 0.0, 0.0, moment=1)
    prev: tuple[Tensor, Tensor] | None = None
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        eps = model(z, t)
        eps_bar = _eps_bar(p, eps, z, t, precondition)
        z_next = conjugate_step(coef, i, z, eps_bar, apply=apply_block)
        if prev is not None:
            z_next = z_next + apply_block(q1[i], (eps_bar - prev[0]) / (t - prev[1]))
        prev, z = (eps_bar, t), z_next
        _info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def sps_s(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
          lam_s: float | None = None) -> Tensor:
    """SPS-S: reduced OBA (``roba``) with the x-noise level λ_s tuned per NFE (``SPS_S_LAMBDA_S``). 1 NFE per step."""
    lam_s = tuned_lambda(len(ts) - 1, SPS_S_LAMBDA_S) if lam_s is None else float(lam_s)
    return roba(model, z, ts, noise=noise, callback=callback, lam_s=lam_s)


@torch.no_grad()
def csps_s(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise = None, callback: Callback = None,
           lam_s: float | None = None, precondition: float = 1.0) -> Tensor:
    """CSPS-S, conjugate OBA: O exactly as in ``roba`` (noise Λ G, Λ = diag(λ_s, 1)), then one ε = ε(z, t) whose B
    and A updates are replaced by the conjugate step of the remaining linear dynamics over [t', t]:
    ``z ← P z + Q ε̄`` for ``linear_ode(p, precondition, λ_s, 1)`` with B = 0 (exact in z, ε̄ frozen).
    1 NFE per step. ``lam_s = None``: tuned per NFE (``CSPS_S_LAMBDA_S``)."""
    p = _process(model)
    lam_s = tuned_lambda(len(ts) - 1, CSPS_S_LAMBDA_S) if lam_s is None else float(lam_s)
    coef = phi_coefficients(linear_ode(p, precondition, lam_s, 1.0), _body(ts), 0.0)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        z = _o_step(p, z, t, t_next, lam_s, noise)
        eps = model(z, t)
        z = conjugate_step(coef, i, z, _eps_bar(p, eps, z, t, precondition), apply=apply_block)
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
_psld("sps-s", sps_s, one_call_per_step, "PSLD: SPS-S, reduced OBA with lam_s tuned per NFE", schedule="quadratic",
      stochastic=True, hyper={"lam_s": None})
_psld("psld-conj", psld_conj, one_call_per_step, "PSLD: conjugate integrator (lambda-DDIM, B = lam 1) on the PF-ODE",
      schedule="quadratic", hyper={"lam": None, "precondition": 1.0})
_psld("csps-d", csps_d, one_call_per_step, "PSLD: CSPS-D, conjugate two-step integrator on the PF-ODE",
      schedule="quadratic", hyper={"lam": None, "precondition": 1.0})
_psld("csps-s", csps_s, one_call_per_step, "PSLD: CSPS-S, conjugate OBA (exact O, conjugate BA)", schedule="quadratic",
      stochastic=True, hyper={"lam_s": None, "precondition": 1.0})

__all__ = ["CSPS_D_LAMBDA", "CSPS_S_LAMBDA_S", "PSLD_CONJ_LAMBDA", "SPS_S_LAMBDA_S", "csps_d", "csps_s", "em",
           "final_step", "linear_ode", "noba", "nse", "nvv", "psld_conj", "roba", "rse", "rvv", "sps_s", "sscs"]
