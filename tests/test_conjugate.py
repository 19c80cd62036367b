"""Conjugate integrators: the k×k core against closed forms, B = 0 against DDIM, lambda-DDIM on exact scores."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import fastdiffusion as fd
from fastdiffusion.bench.edm_exact import MixtureDenoiser, exact_endpoint
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.processes.edm import EDM_PF_ODE
from fastdiffusion.processes.psld import apply_block
from fastdiffusion.samplers import classic, conjugate, make_sigmas, multistep
from fastdiffusion.samplers.counted import CountedModel

RING = GaussianMixture.ring2d()
DENOISE = MixtureDenoiser(RING)



def trajectory(fn, x, sigmas, **hyper):
    states = []
    fn(DENOISE, x.clone(), sigmas, callback=lambda d: states.append(d["x"].clone()), **hyper)
    return states


def noise(n=64, seed=0, dim=2):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 80.0


@pytest.mark.parametrize(("schedule", "n"), [("karras", 1), ("karras", 5), ("karras", 18), ("logsnr", 10)])
def test_conjugate_with_b_zero_is_ddim_step_by_step(schedule, n):
    x, sigmas = noise(), make_sigmas(schedule, n, 0.002, 80.0)
    conj = trajectory(conjugate.conjugate_ddim, x, sigmas)
    for ref_fn in (multistep.ddim, classic.euler):
        for a, b in zip(conj, trajectory(ref_fn, x, sigmas), strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_lambda_ddim_with_lambda_zero_is_ddim():
    x, sigmas = noise(seed=1), make_sigmas("karras", 12, 0.002, 80.0)
    for a, b in zip(trajectory(conjugate.lambda_ddim, x, sigmas, lam=0.0), trajectory(multistep.ddim, x, sigmas),
                    strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, -0.012, 0.02, -0.3])
def test_edm_closed_form_matches_quadrature(lam):
    ts = make_sigmas("karras", 9, 0.002, 80.0)[:-1].tolist()
    closed = conjugate.phi_coefficients(EDM_PF_ODE, ts, lam)
    quad = conjugate.phi_coefficients(EDM_PF_ODE, ts, lam, method="quadrature")
    assert torch.allclose(closed.P, quad.P, rtol=1e-10, atol=1e-12)
    assert torch.allclose(closed.Q, quad.Q, rtol=1e-10, atol=1e-12)
    h = -np.diff(ts)
    want_p = np.exp(lam * h) * (1 - lam * h)
    assert np.allclose(closed.P[:, 0, 0].numpy(), want_p, rtol=1e-13)


def _block_ode():
    """A 2×2 linear ODE shaped like PSLD's critically damped block: Fbar = beta/2 [[-G, Mi], [-1, -nu]]."""
    beta, g, nu, m_inv = 8.0, 0.01, 4.01, 4.0
    fbar = beta / 2 * np.array([[-g, m_inv], [-1.0, -nu]])
    gain = np.array([[0.3, 0.1], [0.0, 2.0]])
    return fbar, gain, conjugate.LinearPFODE(lambda t: fbar, lambda t: gain, k=2, key=("test-block", 1))


def test_general_block_core_matches_matrix_exponentials():
    # Constant Fbar, H, B: A(t_i + s) = expm(s (B - Fbar)) and Phi(t_i + s) = int_0^s expm(r (B - Fbar)) H dr, read
    # off the exponential of the augmented matrix [[B - Fbar, H], [0, 0]].
    fbar, gain, ode = _block_ode()
    b = 0.7 * np.ones((2, 2))
    ts = [1.0, 0.6, 0.3, 0.1, 0.01]
    coef = conjugate.phi_coefficients(ode, ts, b)
    for i, (t0, t1) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        aug = np.zeros((4, 4))
        aug[:2, :2], aug[:2, 2:] = b - fbar, gain
        e = expm((t1 - t0) * aug)
        a1_inv = np.linalg.inv(e[:2, :2])
        assert np.allclose(coef.P[i].numpy(), a1_inv @ (np.eye(2) + (t1 - t0) * b), rtol=1e-9, atol=1e-11)
        assert np.allclose(coef.Q[i].numpy(), a1_inv @ e[:2, 2:], rtol=1e-9, atol=1e-11)


def test_b_zero_is_the_exact_step_for_frozen_output():
    # B = 0: z_{i+1} = P z + Q y solves dz/dt = Fbar z + H y exactly when y is constant (exponential integrator).
    fbar, gain, ode = _block_ode()
    ts = [1.0, 0.55, 0.2]
    coef = conjugate.phi_coefficients(ode, ts, 0.0)
    z0, y = np.array([0.4, -1.3]), np.array([0.8, 0.25])
    z = torch.tensor(z0).reshape(1, 2)  # one (x, m) pair: PSLD's layout
    for i in range(len(ts) - 1):
        z = conjugate.conjugate_step(coef, i, z, torch.tensor(y).reshape(1, 2), apply=apply_block)
    sol = solve_ivp(lambda t, v: fbar @ v + gain @ y, (ts[0], ts[-1]), z0, method="DOP853", rtol=1e-12, atol=1e-14)
    assert np.allclose(z.reshape(-1).numpy(), sol.y[:, -1], rtol=1e-9, atol=1e-12)


def test_time_varying_b_and_cache():
    fbar, gain, ode = _block_ode()
    ts = (1.0, 0.5, 0.1)
    const = conjugate.phi_coefficients(ode, ts, 0.3)
    varying = conjugate.phi_coefficients(ode, ts, conjugate.TimeVarying("const-0.3", lambda t: 0.3 * np.eye(2)))
    assert torch.allclose(const.P, varying.P, rtol=1e-9, atol=1e-12)
    assert torch.allclose(const.Q, varying.Q, rtol=1e-9, atol=1e-12)
    assert conjugate.phi_coefficients(ode, ts, 0.3) is const  # computed once per (ode, grid, B)


def test_lambda_table_interpolation():
    table = {4: -1.0, 16: -3.0}
    assert conjugate.tuned_lambda(4, table) == -1.0 and conjugate.tuned_lambda(16, table) == -3.0
    assert conjugate.tuned_lambda(1, table) == -1.0 and conjugate.tuned_lambda(1000, table) == -3.0
    assert conjugate.tuned_lambda(8, table) == pytest.approx(-2.0)  # linear in ln(NFE): 8 is halfway


@pytest.mark.parametrize("sampler", ["lambda-ddim", "conjugate-ddim"])
@pytest.mark.parametrize("nfe", [1, 2, 5, 10, 13])
def test_nfe_accounting(sampler, nfe):
    model = CountedModel(RING.denoise)
    out = fd.sample(model, torch.randn(4, 2), sampler=sampler, nfe=nfe)
    assert model.calls == nfe
    assert torch.isfinite(out).all()


@pytest.fixture(scope="module")
def ring_problem():
    x_t = noise(256, seed=5)
    return x_t, exact_endpoint(RING, x_t, rtol=1e-10)[0]


def _err(fn, x_t, exact, n, **hyper):
    return float((fn(DENOISE, x_t.clone(), make_sigmas("karras", n, 0.002, 80.0), **hyper) - exact).norm(dim=1).mean())


def test_lambda_ddim_is_ddim_by_default_beats_it_at_a_negative_lambda_and_converges_at_first_order(ring_problem):
    x_t, exact = ring_problem
    for n in (5, 10):
        ddim = _err(conjugate.conjugate_ddim, x_t, exact, n)
        assert _err(conjugate.lambda_ddim, x_t, exact, n) == ddim
        assert _err(conjugate.lambda_ddim, x_t, exact, n, lam=-0.012) < 0.75 * ddim
    errs = [_err(conjugate.lambda_ddim, x_t, exact, n, lam=-0.012) for n in (50, 100, 200)]
    slopes = -np.diff(np.log(errs)) / np.log(2)
    assert np.all(np.abs(slopes - 1) < 0.25), (errs, slopes)
