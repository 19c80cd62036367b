"""PSLD samplers on exact Gaussian-mixture scores: convergence order against the exact PF-ODE endpoint, stochastic
samplers against the data distribution, exact NFE accounting through ``fastdiffusion.sample``."""

import math

import numpy as np
import pytest
import torch

import fastdiffusion as fd
from fastdiffusion.bench.psld_samplers import mmd
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.processes.psld import PSLD
from fastdiffusion.processes.psld_exact import PSLDMixtureEps, pf_ode_solution
from fastdiffusion.samplers import SAMPLERS, make_sigmas, splitting
from fastdiffusion.samplers.conjugate import phi_coefficients

# Broad, overlapping modes: no trajectory sits on a mode boundary, so errors fall smoothly with the step size.
MIX = GaussianMixture.random(2, 4, seed=3, spread=0.8, component_std=0.4)
P = PSLD()
EPS = PSLDMixtureEps(MIX, P)
PSLD_NAMES = sorted(n for n, s in SAMPLERS.items() if s.family == "psld")


def prior(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return P.prior(*(torch.randn(n, 2, generator=gen, dtype=torch.float64) for _ in range(2)))


@pytest.fixture(scope="module")
def ode_problem():
    """32 prior draws and their exact PF-ODE endpoints (float64 DOP853 to eval_eps, then the shared last step)."""
    z = prior(32, 0)
    end = pf_ode_solution(EPS, z, P.T, P.eval_eps, rtol=1e-11, atol=1e-11)
    return z, splitting.final_step(EPS, end, torch.tensor(P.eval_eps, dtype=torch.float64))


def errors(fn, z, target, steps, **hyper):
    out = []
    for n in steps:
        ts = make_sigmas("quadratic", n, P.eval_eps, P.T)
        out.append(float((fn(EPS, z.clone(), ts, **hyper) - target)[:, :2].norm(dim=1).mean()))
    return out


@pytest.mark.parametrize(("fn", "hyper", "order"), [
    (splitting.nse, {}, 1), (splitting.rse, {}, 1), (splitting.rvv, {}, 1), (splitting.psld_conj, {"lam": 0.5}, 1),
    (splitting.psld_conj, {"lam": 0.0, "precondition": 0.0}, 1), (splitting.csps_d, {"lam": 0.0}, 2),
])
def test_deterministic_samplers_converge_at_their_order(ode_problem, fn, hyper, order):
    z, target = ode_problem
    errs = errors(fn, z, target, [20, 40, 80, 160], **hyper)
    slopes = -np.diff(np.log(errs)) / math.log(2)
    assert abs(slopes[-1] - order) < 0.3, (errs, slopes)
    assert errs[-1] < errs[0] / 2 ** (2.4 * order), errs


def test_naive_velocity_verlet_is_first_order(ode_problem):
    """NVV's kicks are Euler steps of a sub-flow whose right side depends on the updated variable (the friction and
    ε), so it is first order; its pre-asymptotic slope is larger and falls towards 1."""
    z, target = ode_problem
    errs = errors(splitting.nvv, z, target, [40, 80, 160, 320])
    slopes = -np.diff(np.log(errs)) / math.log(2)
    assert 0.8 < slopes[-1] < 1.35 and slopes[-1] < slopes[0], (errs, slopes)


def test_conjugate_coefficients_closed_form_matches_quadrature():
    ts = [float(t) for t in make_sigmas("quadratic", 4, P.eval_eps, P.T) if t > 0]
    for ode, b in ((splitting.linear_ode(P, 1.0), splitting._ones(0.7)), (splitting.linear_ode(P, 0.0), 0.0),
                   (splitting.linear_ode(P, 1.0, 0.5, 1.0), 0.0)):
        closed = phi_coefficients(ode, ts, b)
        quad = phi_coefficients(ode, ts, b, method="quadrature")
        assert torch.allclose(closed.P, quad.P, atol=1e-10) and torch.allclose(closed.Q, quad.Q, atol=1e-10)


def test_conjugate_samplers_run_on_a_time_varying_beta():
    p = PSLD(beta_min=0.1, beta_max=20.0)
    model = PSLDMixtureEps(MIX, p)
    ts = make_sigmas("quadratic", 3, p.eval_eps, p.T)
    z = prior(16, 1)
    for fn in (splitting.psld_conj, splitting.csps_s):
        assert torch.isfinite(fn(model, z.clone(), ts)).all()
    with pytest.raises(UserError, match="constant beta"):
        splitting.csps_d(model, z.clone(), ts)


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


class CountingModel:
    def __init__(self):
        self.calls, self.process = 0, P

    def __call__(self, z, t):
        self.calls += 1
        assert t.shape == (z.shape[0],) and (t > 0).all()  # per-row times, never t = 0
        return EPS(z, t[0])


@pytest.mark.parametrize("name", PSLD_NAMES)
def test_nfe_accounting(name):
    k = {"nse": 2, "noba": 2, "nvv": 3}.get(name, 1)
    for nfe in (1, 1 + k, 1 + 3 * k):
        model = CountingModel()
        x = fd.sample(model, torch.randn(4, 2), sampler=name, nfe=nfe, noise_fn=fd.SeededNoise(range(4)))
        assert model.calls == nfe and x.shape == (4, 2) and torch.isfinite(x).all()
    if k > 1:
        with pytest.raises(UserError, match=f"{k}n\\+1"):
            fd.sample(CountingModel(), torch.randn(4, 2), sampler=name, nfe=2 + k)


def test_sample_is_reproducible_and_checks_the_family():
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    a = fd.sample(CountingModel(), noise, sampler="csps-s", nfe=5, noise_fn=fd.SeededNoise(range(6)))
    b = fd.sample(CountingModel(), noise, sampler="csps-s", nfe=5, noise_fn=fd.SeededNoise(range(6)))
    assert torch.equal(a, b)
    with pytest.raises(UserError, match="psld sampler"):
        fd.sample(lambda x, s: x, noise, sampler="sscs", nfe=5)
    with pytest.raises(UserError, match="no option"):
        fd.sample(CountingModel(), noise, sampler="rvv", nfe=5, lam=0.3)


def test_tuned_defaults_cover_the_benchmark_nfes():
    for table in (splitting.PSLD_CONJ_LAMBDA, splitting.CSPS_D_LAMBDA, splitting.SPS_S_LAMBDA_S,
                  splitting.CSPS_S_LAMBDA_S):
        assert set(table) >= {10, 20, 50, 100, 200}
