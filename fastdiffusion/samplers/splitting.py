"""PSLD samplers in the augmented space z = (x, m): Euler-Maruyama, SSCS, splitting and conjugate integrators.

Signature ``fn(model, z, ts, *, noise, callback, **hyper) -> z`` with ``model(z, t) -> ε`` and ``model.process`` its
``PSLD``; ``ts`` decreases from T to eval_eps, then 0. Every coefficient comes from the process. The last step
(eval_eps → 0) is one noise-free Euler step of the sampler's own reverse process and costs 1 NFE. Names follow Pandey,
Rudolph & Mandt (arXiv 2310.07894); the update rules, their NFE per step and measured orders are in
docs/samplers.md ("PSLD samplers")."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from ..processes.psld import PSLD, apply_block, cholesky2, join, split
from .conjugate import conjugate_step, phi_coefficients, tuned_lambda
from .registry import Callback, EpsModel, Noise, SamplerSpec, one_call_per_step, register, step_info

# Per-NFE defaults, tuned on mixtures kept apart from the benchmark's by
#   python -m fastdiffusion.bench.psld_samplers --tune --skip-bench --n 4000 --n-exact 300
# (protocol: fastdiffusion/bench/psld_samplers.py; scores in benchmarks/psld_samplers/tuning.json), for the default
# quadratic schedule on [eval_eps, T] of the reference PSLD constants. Between the listed NFEs the value is
# interpolated linearly in ln(NFE); outside them the nearest entry is used (``conjugate.tuned_lambda``).
PSLD_CONJ_LAMBDA: dict[int, float] = {10: -1.5, 20: -1.5, 50: -1.5, 100: -1.5, 200: -1.5}
CSPS_D_LAMBDA: dict[int, float] = {10: -1.0, 20: -0.5, 50: 0.0, 100: -0.25, 200: -0.25}
SPS_S_LAMBDA_S: dict[int, float] = {10: 3.0, 20: 5.0, 50: 7.0, 100: 5.0, 200: 5.0}
CSPS_S_LAMBDA_S: dict[int, float] = {10: 0.0, 20: 0.0, 50: 0.0, 100: 2.0, 200: 2.0}


def _process(model: EpsModel) -> PSLD:
    if not isinstance(model.process, PSLD):
        raise UserError("PSLD samplers need a PSLD model (one whose .process is a PSLD process)")
    return model.process


def _randn(noise: Noise | None, z: Tensor) -> Tensor:
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
def em(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None) -> Tensor:
    """Euler-Maruyama on the reverse SDE (PSLD eq. 11): z' = z − h (F z + 2 K ε) + √h G n. 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, 1.0, 1.0)
        h = t - t_next
        eps = model(z, t)
        z = z - h * p.reverse_sde_drift(z, eps, t) + h.sqrt() * apply_block(p.diffusion_matrix(t), _randn(noise, z))
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


def _ou_step(p: PSLD, z: Tensor, t_from: Tensor, t_to: Tensor, noise: Noise | None) -> Tensor:
    mean, cov = p.reverse_ou(t_from, t_to)
    return apply_block(mean, z) + apply_block(cholesky2(cov), _randn(noise, z))


@torch.no_grad()
def sscs(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None) -> Tensor:
    """SSCS (Dockhorn et al. 2022; PSLD eq. 12): exact linear OU (h/2) → Euler score step (h) at t − h/2 → exact OU
    (h/2). 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, 1.0, 1.0)
        h, t_mid = t - t_next, (t + t_next) / 2
        z = _ou_step(p, z, t, t_mid, noise)
        eps = model(z, t_mid)
        z = z + h * (apply_block(p.score_split_matrix(t_mid), z) - 2 * apply_block(p.eps_matrix(t_mid), eps))
        z = _ou_step(p, z, t_mid, t_next, noise)
        step_info(callback, i=i, t=t, z=z, eps=eps)
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
def nse(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None) -> Tensor:
    """Naive symplectic Euler on the PF-ODE: m-kick with ε(x, m, t), then x-drift with a fresh ε(x, m', t).
    2 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h = t - t_next
        z = _kick(p, z, model(z, t), t, h)
        eps = model(z, t)
        z = _drift(p, z, eps, t, h)
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def rse(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None) -> Tensor:
    """Reduced symplectic Euler: ``nse`` with one ε = ε(x, m, t) per step. 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h = t - t_next
        eps = model(z, t)
        z = _drift(p, _kick(p, z, eps, t, h), eps, t, h)
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def nvv(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None) -> Tensor:
    """Naive velocity Verlet (kick h/2 at t, drift h at t − h/2, kick h/2 at t'), a fresh ε per sub-update.
    3 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h, t_mid = t - t_next, (t + t_next) / 2
        z = _kick(p, z, model(z, t), t, h / 2)
        z = _drift(p, z, model(z, t_mid), t_mid, h)
        eps = model(z, t_next)
        z = _kick(p, z, eps, t_next, h / 2)
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def rvv(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None) -> Tensor:
    """Reduced velocity Verlet: ``nvv`` with one ε(x, m, t) per step, the linear terms at each sub-update's state and
    time. 1 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        h, t_mid = t - t_next, (t + t_next) / 2
        eps = model(z, t)
        z = _kick(p, z, eps, t, h / 2)
        z = _drift(p, z, eps, t_mid, h)
        z = _kick(p, z, eps, t_next, h / 2)
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


# -- stochastic splitting: O (exact friction + noise), B (momentum), A (position) ------------------------------------
def _o_step(p: PSLD, z: Tensor, t: Tensor, t_next: Tensor, lam_s: float, noise: Noise | None) -> Tensor:
    decay, var = p.friction_flow(t, t_next, lam_s, 1.0)
    return apply_block(decay, z) + apply_block(var.sqrt(), _randn(noise, z))


def _gained_k(p: PSLD, t: Tensor, lam_s: float) -> Tensor:
    """(I + Λ²) K with Λ = diag(λ_s, 1)."""
    k = p.eps_matrix(t)
    return p.noise_gain(lam_s, 1.0, k.device) @ k


def _b_step(p: PSLD, z: Tensor, eps: Tensor, t: Tensor, h: Tensor, lam_s: float) -> Tensor:
    """m ← m + h [W z − (I + Λ²) K ε]_m."""
    x, m = split(z)
    return join(x, m + h * (_row(p.hamiltonian_matrix(t, lam_s), z, 1) - _row(_gained_k(p, t, lam_s), eps, 1)))


def _a_step(p: PSLD, z: Tensor, eps: Tensor, t: Tensor, h: Tensor, lam_s: float) -> Tensor:
    """x ← x + h [W z − (I + Λ²) K ε]_x."""
    x, m = split(z)
    return join(x + h * (_row(p.hamiltonian_matrix(t, lam_s), z, 0) - _row(_gained_k(p, t, lam_s), eps, 0)), m)


@torch.no_grad()
def noba(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None,
         lam_s: float = 1.0) -> Tensor:
    """Naive OBA with noise Λ G, Λ = diag(λ_s, 1): exact O (``PSLD.friction_flow``), then Euler B (m) and A (x) updates
    at the interval's start t, each with a fresh ε. 2 NFE per step."""
    p = _process(model)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        h = t - t_next
        z = _o_step(p, z, t, t_next, lam_s, noise)
        z = _b_step(p, z, model(z, t), t, h, lam_s)
        eps = model(z, t)
        z = _a_step(p, z, eps, t, h, lam_s)
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def roba(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None,
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
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


# -- conjugate integrators: the PSLD process gives the linear PF-ODE (``PSLD.linear_pf_ode``), the core its steps --
def _body(ts: Tensor) -> list[float]:
    return [float(t) for t in ts if t > 0]


def _ones(lam: float) -> list[list[float]]:
    """B = λ 1: λ times the all-ones 2×2 block (λ-DDIM-II)."""
    return [[lam, lam], [lam, lam]]


@torch.no_grad()
def psld_conj(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None,
              lam: float | None = None, precondition: float = 1.0) -> Tensor:
    """Conjugate Euler on the PSLD PF-ODE (λ-DDIM, B = λ 1): z' = P z + Q ε̄ for ``PSLD.linear_pf_ode``;
    ``lam = None`` takes the value tuned per NFE. 1 NFE per step."""
    p = _process(model)
    lam = tuned_lambda(len(ts) - 1, PSLD_CONJ_LAMBDA) if lam is None else float(lam)
    coef = phi_coefficients(p.linear_pf_ode(precondition), _body(ts), _ones(lam))
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        eps = model(z, t)
        z = conjugate_step(coef, i, z, p.eps_bar(eps, z, t, precondition), apply=apply_block)
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def csps_d(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None,
           lam: float | None = None, precondition: float = 1.0) -> Tensor:
    """CSPS-D: ``psld_conj`` with ε̄ linear in time from the last two calls,
    z' = P z + Q ε̄_i + Q₁ (ε̄_i − ε̄_{i−1}) / (t_i − t_{i−1}); needs a constant β. 1 NFE per step."""
    p = _process(model)
    if p.beta_min != p.beta_max:
        raise UserError("csps-d needs a constant beta (beta_min == beta_max); use psld-conj")
    lam = tuned_lambda(len(ts) - 1, CSPS_D_LAMBDA) if lam is None else float(lam)
    body = _body(ts)
    coef = phi_coefficients(p.linear_pf_ode(precondition), body, _ones(lam))
    grid = torch.tensor(body, dtype=torch.float64)
    b = torch.tensor(_ones(lam), dtype=torch.float64)
    q1 = p.conjugate_weights(grid[:-1], grid[1:], b, precondition, 0.0, 0.0, moment=1)
    prev: tuple[Tensor, Tensor] | None = None
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t)
        eps = model(z, t)
        eps_bar = p.eps_bar(eps, z, t, precondition)
        z_next = conjugate_step(coef, i, z, eps_bar, apply=apply_block)
        if prev is not None:
            z_next = z_next + apply_block(q1[i], (eps_bar - prev[0]) / (t - prev[1]))
        prev, z = (eps_bar, t), z_next
        step_info(callback, i=i, t=t, z=z, eps=eps)
    return z


@torch.no_grad()
def sps_s(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None,
          lam_s: float | None = None) -> Tensor:
    """SPS-S: reduced OBA (``roba``) with the x-noise level λ_s tuned per NFE (``SPS_S_LAMBDA_S``). 1 NFE per step."""
    lam_s = tuned_lambda(len(ts) - 1, SPS_S_LAMBDA_S) if lam_s is None else float(lam_s)
    return roba(model, z, ts, noise=noise, callback=callback, lam_s=lam_s)


@torch.no_grad()
def csps_s(model: EpsModel, z: Tensor, ts: Tensor, *, noise: Noise | None = None, callback: Callback = None,
           lam_s: float | None = None, precondition: float = 1.0) -> Tensor:
    """CSPS-S, conjugate OBA: exact O as in ``roba``, then the conjugate step of the remaining linear dynamics
    (B = 0) with one ε(z, t). 1 NFE per step."""
    p = _process(model)
    lam_s = tuned_lambda(len(ts) - 1, CSPS_S_LAMBDA_S) if lam_s is None else float(lam_s)
    coef = phi_coefficients(p.linear_pf_ode(precondition, lam_s, 1.0), _body(ts), 0.0)
    for i, (t, t_next) in enumerate(_steps(ts)):
        if t_next == 0:
            return final_step(model, z, t, lam_s, 1.0)
        z = _o_step(p, z, t, t_next, lam_s, noise)
        eps = model(z, t)
        z = conjugate_step(coef, i, z, p.eps_bar(eps, z, t, precondition), apply=apply_block)
        step_info(callback, i=i, t=t, z=z, eps=eps)
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
           "final_step", "noba", "nse", "nvv", "psld_conj", "roba", "rse", "rvv", "sps_s", "sscs"]
