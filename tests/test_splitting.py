"""PSLD samplers on exact Gaussian-mixture scores: convergence order against the exact PF-ODE endpoint, the drift of the
stochastic samplers against the exact solution of their noise-free reverse dynamics, stochastic samplers against the
data distribution, the times and number of network calls through ``fastdiffusion.sample``, and the tuned tables."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import fastdiffusion as fd
from fastdiffusion.bench.psld_exact import PSLDMixtureEps, pf_ode_solution
from fastdiffusion.bench.psld_samplers import mmd
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.processes.psld import PSLD
from fastdiffusion.samplers import SAMPLERS, make_sigmas, splitting
from fastdiffusion.samplers.conjugate import phi_coefficients

# Broad, overlapping modes: no trajectory sits on a mode boundary, so errors fall smoothly with the step size.
MIX = GaussianMixture.random(2, 4, seed=3, spread=0.8, component_std=0.4)
P = PSLD()
EPS = PSLDMixtureEps(MIX, P)
PSLD_NAMES = sorted(n for n, s in SAMPLERS.items() if s.family == "psld")
# A time-varying beta: no closed form, the conjugate coefficients come from quadrature.
P_VAR = PSLD(beta_min=0.1, beta_max=20.0)
EPS_VAR = PSLDMixtureEps(MIX, P_VAR)


def prior(n: int, seed: int, process: PSLD = P) -> torch.Tensor:
    """z_T = (x, m) ~ N(0, diag(1, M)), float64."""
    gen = torch.Generator().manual_seed(seed)
    x, m = (torch.randn(n, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    return torch.cat([x, math.sqrt(process.M) * m], dim=1)


def zero_noise(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like)


def noise_free_endpoint(model, z, noise_x: float, noise_m: float, rtol: float = 1e-9) -> torch.Tensor:
    """Exact end of the reverse dynamics with noise Λ = diag(noise_x, noise_m) and its noise term dropped:
    dz/dt = F z + (I + Λ²) K ε(z, t) (Λ = 0: the PF-ODE), float64 DOP853 in u = ln t from T to eval_eps, then the
    samplers' shared last step with the same Λ. A stochastic sampler run with zero noise integrates this ODE."""
    process, shape = model.process, z.shape

    def rhs(u, flat):
        t = math.exp(u)
        zz = torch.from_numpy(flat).reshape(shape)
        return (t * process.reverse_drift(zz, model(zz, t), t, noise_x, noise_m)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(process.T), math.log(process.eval_eps)), z.reshape(-1).numpy(), method="DOP853",
                    rtol=rtol, atol=rtol)
    assert sol.success
    end = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    return splitting.final_step(model, end, torch.tensor(process.eval_eps, dtype=torch.float64), noise_x, noise_m)


@pytest.fixture(scope="module")
def ode_problem():
    """32 prior draws and their exact PF-ODE endpoints (float64 DOP853 to eval_eps, then the shared last step)."""
    z = prior(32, 0)
    end = pf_ode_solution(EPS, z, P.T, P.eval_eps, rtol=1e-11, atol=1e-11)
    return z, splitting.final_step(EPS, end, torch.tensor(P.eval_eps, dtype=torch.float64))


def errors(fn, z, target, steps, model=EPS, **hyper):
    """Mean x-error ||x - x_exact|| of ``fn`` at each number of steps (quadratic schedule)."""
    out = []
    for n in steps:
        ts = make_sigmas("quadratic", n, model.process.eval_eps, model.process.T)
        out.append(float((fn(model, z.clone(), ts, **hyper) - target)[:, :2].norm(dim=1).mean()))
    return out


def slopes(errs, steps):
    return -np.diff(np.log(errs)) / np.diff(np.log(steps))


@pytest.mark.parametrize(("fn", "hyper", "order"), [
    (splitting.nse, {}, 1), (splitting.rse, {}, 1), (splitting.rvv, {}, 1), (splitting.psld_conj, {"lam": 0.5}, 1),
    (splitting.psld_conj, {"lam": 0.0, "precondition": 0.0}, 1), (splitting.csps_d, {"lam": 0.0}, 2),
])
def test_deterministic_samplers_converge_at_their_order(ode_problem, fn, hyper, order):
    z, target = ode_problem
    errs = errors(fn, z, target, [20, 40, 80, 160], **hyper)
    s = slopes(errs, [20, 40, 80, 160])
    assert abs(s[-1] - order) < 0.3, (errs, s)
    assert errs[-1] < errs[0] / 2 ** (2.4 * order), errs


def test_naive_velocity_verlet_is_first_order(ode_problem):
    """NVV's kicks are Euler steps of a sub-flow whose right side depends on the updated variable (the friction and
    ε), so it is first order; its pre-asymptotic slope is larger and falls towards 1."""
    z, target = ode_problem
    errs = errors(splitting.nvv, z, target, [40, 80, 160, 320])
    s = slopes(errs, [40, 80, 160, 320])
    assert 0.8 < s[-1] < 1.35 and s[-1] < s[0], (errs, s)


@pytest.fixture(scope="module")
def noise_free_problems():
    """16 prior draws and the exact noise-free endpoints for Λ = I (the reverse SDE) and Λ = diag(5, 1)."""
    z = prior(16, 7)
    return z, {lam_s: noise_free_endpoint(EPS, z, lam_s, 1.0) for lam_s in (1.0, 5.0)}


@pytest.mark.parametrize(("fn", "lam_s"), [
    (splitting.em, 1.0), (splitting.sscs, 1.0), (splitting.noba, 5.0), (splitting.roba, 5.0), (splitting.csps_s, 5.0),
])
def test_stochastic_samplers_integrate_their_drift_at_first_order(noise_free_problems, fn, lam_s):
    """With zero noise every stochastic sampler (its O steps exact, B/A or conjugate steps for the rest) is a
    first-order integrator of the noise-free reverse dynamics of its Λ: the error to that ODE's exact endpoint halves
    with each doubling of the steps, from below 0.15 at NFE 20 (data of spread ~1, steps ~1/20 of the time range).
    Λ = diag(5, 1) (sps-s's tuned range) makes the Λ-dependent friction and ε gain matter: Γ λ_s² = 0.25."""
    z, targets = noise_free_problems
    hyper = {} if fn in (splitting.em, splitting.sscs) else {"lam_s": lam_s}
    steps = [20, 40, 80]
    errs = errors(fn, z, targets[lam_s], steps, noise=zero_noise, **hyper)
    s = slopes(errs, steps)
    assert errs[0] < 0.15 and all(0.75 < v < 1.45 for v in s), (errs, s)


def test_conjugate_coefficients_closed_form_matches_quadrature():
    ts = [float(t) for t in make_sigmas("quadratic", 4, P.eval_eps, P.T) if t > 0]
    for ode, b in ((P.linear_pf_ode(1.0), splitting._ones(0.7)), (P.linear_pf_ode(0.0), 0.0),
                   (P.linear_pf_ode(1.0, 0.5, 1.0), 0.0)):
        closed = phi_coefficients(ode, ts, b)
        quad = phi_coefficients(ode, ts, b, method="quadrature")
        assert torch.allclose(closed.P, quad.P, atol=1e-10) and torch.allclose(closed.Q, quad.Q, atol=1e-10)


def test_psld_conj_converges_on_a_time_varying_beta():
    """beta(t) = 0.1 + 19.9 t: the quadrature coefficients of the PF-ODE still give a first-order integrator of it."""
    z = prior(8, 1, P_VAR)
    target = noise_free_endpoint(EPS_VAR, z, 0.0, 0.0, rtol=1e-8)
    errs = errors(splitting.psld_conj, z, target, [10, 20], model=EPS_VAR, lam=0.0)
    assert errs[1] < 0.15 and 0.7 < slopes(errs, [10, 20])[0] < 1.3, errs
    with pytest.raises(UserError, match="constant beta"):
        splitting.csps_d(EPS_VAR, z.clone(), make_sigmas("quadratic", 3, P_VAR.eval_eps, P_VAR.T))


def test_csps_s_beats_reduced_oba_on_a_time_varying_beta():
    """CSPS-S replaces ROBA's Euler B/A updates by the exact flow of the linear dynamics (quadrature coefficients
    here); with zero noise both integrate the same noise-free reverse dynamics, and at NFE 20 CSPS-S is well ahead."""
    z = prior(8, 1, P_VAR)
    target = noise_free_endpoint(EPS_VAR, z, 0.5, 1.0, rtol=1e-8)
    conj, = errors(splitting.csps_s, z, target, [20], model=EPS_VAR, lam_s=0.5, noise=zero_noise)
    euler, = errors(splitting.roba, z, target, [20], model=EPS_VAR, lam_s=0.5, noise=zero_noise)
    assert conj < euler / 3 and conj < 0.05, (conj, euler)


@pytest.mark.parametrize("name", ["em", "sscs", "noba", "roba", "sps-s", "csps-s"])
def test_stochastic_samplers_reach_the_data_distribution(name):
    spec = SAMPLERS[name]
    z = prior(2000, 2)
    dist = {}
    for nfe in (4, 100):
        ts = make_sigmas(spec.schedule, spec.steps(nfe - (nfe - 1) % 2 if name == "noba" else nfe), P.eval_eps, P.T)
        gen = torch.Generator().manual_seed(5)
        draw = lambda like, g=gen: torch.randn(like.shape, generator=g, dtype=like.dtype)  # noqa: E731
        x = spec.fn(EPS, z.clone(), ts, noise=draw, callback=None, **spec.hyper)[:, :2]
        dist[nfe] = mmd(x, MIX)
    assert dist[100] < 0.05 and dist[100] < dist[4] / 3, dist


class RecordingModel:
    """The exact ε of ``MIX`` that records the time of every call."""

    def __init__(self):
        self.times, self.process = [], P

    def __call__(self, z, t):
        assert t.shape == (z.shape[0],) and bool((t == t[0]).all())  # one time per row, all equal
        self.times.append(float(t[0]))
        return EPS(z, t[0])


def quadratic_times(n: int) -> list[float]:
    """The n nonzero times of the quadratic schedule: t_i = (√T + i/(n−1) (√eps − √T))², t_0 = T (n = 1: just T)."""
    if n == 1:
        return [P.T]
    a, b = math.sqrt(P.T), math.sqrt(P.eval_eps)
    return [(a + i / (n - 1) * (b - a)) ** 2 for i in range(n)]


def expected_call_times(name: str, nfe: int) -> list[float]:
    """The times at which each sampler calls the network (module docstring of samplers/splitting.py): one call per
    step at its start t (SSCS: at the midpoint), NSE/NOBA two at t, NVV at t, the midpoint and t'; then the last
    step's single call at the last nonzero time."""
    k = {"nse": 2, "noba": 2, "nvv": 3}.get(name, 1)
    assert (nfe - 1) % k == 0
    ts = quadratic_times((nfe - 1) // k + 1)
    body = list(zip(ts[:-1], ts[1:], strict=True))
    per_step = {"sscs": lambda t, s: [(t + s) / 2], "nse": lambda t, s: [t, t], "noba": lambda t, s: [t, t],
                "nvv": lambda t, s: [t, (t + s) / 2, s]}.get(name, lambda t, s: [t])
    return [c for t, s in body for c in per_step(t, s)] + [ts[-1]]


@pytest.mark.parametrize("name", PSLD_NAMES)
def test_nfe_accounting_and_call_times(name):
    k = {"nse": 2, "noba": 2, "nvv": 3}.get(name, 1)
    for nfe in (1, 1 + k, 1 + 3 * k):
        model = RecordingModel()
        fd.sample(model, torch.randn(4, 2), sampler=name, nfe=nfe, noise_fn=fd.SeededNoise(range(4)), process=P)
        assert len(model.times) == nfe
        # Times reach the model in float32 (fd.sample's state is fp32): relative rounding <= 2^-24.
        np.testing.assert_allclose(model.times, expected_call_times(name, nfe), rtol=2**-23, atol=0)
    if k > 1:
        with pytest.raises(UserError, match=f"{k}n\\+1"):
            fd.sample(RecordingModel(), torch.randn(4, 2), sampler=name, nfe=2 + k, process=P)


def test_sample_is_reproducible_and_checks_the_family():
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    a = fd.sample(RecordingModel(), noise, sampler="csps-s", nfe=5, noise_fn=fd.SeededNoise(range(6)), process=P)
    b = fd.sample(RecordingModel(), noise, sampler="csps-s", nfe=5, noise_fn=fd.SeededNoise(range(6)), process=P)
    assert torch.equal(a, b)
    with pytest.raises(UserError, match="psld sampler"):
        fd.sample(lambda x, s: x, noise, sampler="sscs", nfe=5)
    with pytest.raises(UserError, match="no option"):
        fd.sample(RecordingModel(), noise, sampler="rvv", nfe=5, lam=0.3, process=P)


TUNED = {"psld-conj": ("lam", splitting.PSLD_CONJ_LAMBDA), "csps-d": ("lam", splitting.CSPS_D_LAMBDA),
         "sps-s": ("lam_s", splitting.SPS_S_LAMBDA_S), "csps-s": ("lam_s", splitting.CSPS_S_LAMBDA_S)}


def table_value(table: dict[int, float], nfe: int) -> float:
    """The documented rule: the entry at a listed NFE, linear in ln NFE between entries, the nearest entry outside."""
    keys = sorted(table)
    if nfe <= keys[0] or nfe >= keys[-1]:
        return table[min(max(nfe, keys[0]), keys[-1])]
    lo, hi = max(k for k in keys if k <= nfe), min(k for k in keys if k >= nfe)
    if lo == hi:
        return table[lo]
    w = math.log(nfe / lo) / math.log(hi / lo)
    return (1 - w) * table[lo] + w * table[hi]


@pytest.mark.parametrize("name", sorted(TUNED))
def test_tuned_tables_are_what_the_samplers_use(name):
    """At every NFE the benchmark uses (10, 20, 50, 100, 200), between two of them (30) and below them (5), the
    sampler's default equals an explicit run with the table's value at that NFE, and an explicit run with a different
    value differs (so equality identifies the value used)."""
    key, table = TUNED[name]
    assert set(table) == {10, 20, 50, 100, 200}
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))

    def run(nfe, **hyper):
        return fd.sample(RecordingModel(), noise, sampler=name, nfe=nfe, noise_fn=fd.SeededNoise(range(3)), process=P,
                         **hyper)

    for nfe in (5, 10, 20, 30, 50, 100, 200):
        value = table_value(table, nfe)
        default = run(nfe)
        assert torch.equal(default, run(nfe, **{key: value})), (nfe, value)
        if nfe == 30:
            assert not torch.equal(default, run(nfe, **{key: value + 0.5}))
