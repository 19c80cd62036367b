"""EDM-family samplers against the exact probability-flow ODE of Gaussian mixtures and against k-diffusion."""

import numpy as np
import pytest
import torch
from reference_samplers import load_k_diffusion_sampling
from scipy.integrate import solve_ivp

import fastdiffusion as fd
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.samplers import classic, make_sigmas
from fastdiffusion.samplers.counted import CountedModel

GMM = GaussianMixture.ring2d()
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def exact_endpoint(x_T: torch.Tensor) -> torch.Tensor:
    """Exact PF-ODE from SIGMA_MAX to SIGMA_MIN (DOP853, rtol 1e-12, in u = ln sigma: dx/du = x - D(x, sigma)),
    then the final denoising step D(x, SIGMA_MIN) that every sampler ends with."""
    shape = x_T.shape

    def rhs(u, flat):
        x = torch.from_numpy(flat).reshape(shape)
        return (x - GMM.denoise(x, float(np.exp(u)))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (np.log(SIGMA_MAX), np.log(SIGMA_MIN)), x_T.double().reshape(-1).numpy(),
                    method="DOP853", rtol=1e-12, atol=1e-12)
    x = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    return GMM.denoise(x, SIGMA_MIN)


@pytest.fixture(scope="module")
def ode_problem():
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX
    return x_T, exact_endpoint(x_T)


def sampler_error(fn, x_T, target, n_steps):
    sigmas = make_sigmas("karras", n_steps, SIGMA_MIN, SIGMA_MAX)
    out = fn(GMM.denoise, x_T.clone(), sigmas)
    return float((out - target).norm(dim=1).mean())


@pytest.mark.parametrize(("fn", "order"), [(classic.euler, 1), (classic.heun, 2)])
def test_converges_to_exact_pf_ode_at_stated_order(ode_problem, fn, order):
    x_T, target = ode_problem
    steps = [16, 32, 64, 128]
    errors = [sampler_error(fn, x_T, target, n) for n in steps]
    slopes = -np.diff(np.log(errors)) / np.log(2)
    assert errors[-1] < errors[0] / 2 ** (order * 2.5)
    assert abs(slopes[-1] - order) < 0.35, (errors, slopes)


def test_heun_beats_euler_at_equal_nfe(ode_problem):
    x_T, target = ode_problem
    assert sampler_error(classic.heun, x_T, target, 64) < sampler_error(classic.euler, x_T, target, 127) / 4


@pytest.mark.parametrize(("sampler", "nfe", "opts"), [("euler", 1, {}), ("euler", 7, {}), ("heun", 1, {}),
                                                       ("heun", 9, {}), ("heun", 35, {"churn": 5.0})])
def test_nfe_accounting(sampler, nfe, opts):
    model = CountedModel(GMM.denoise)
    fd.sample(model, torch.randn(4, 2), sampler=sampler, nfe=nfe, **opts)
    assert model.calls == nfe


def test_heun_even_nfe_is_a_clear_error():
    with pytest.raises(UserError, match="odd --nfe"):
        fd.sample(CountedModel(GMM.denoise), torch.randn(4, 2), sampler="heun", nfe=10)


def test_unknown_sampler_and_option():
    with pytest.raises(UserError, match="unknown sampler"):
        fd.sample(CountedModel(GMM.denoise), torch.randn(4, 2), sampler="nope", nfe=5)
    with pytest.raises(UserError, match="no option"):
        fd.sample(CountedModel(GMM.denoise), torch.randn(4, 2), sampler="euler", nfe=5, churn=1.0)


@pytest.fixture(scope="module")
def kd():
    return load_k_diffusion_sampling()


@pytest.mark.parametrize("n_steps", [1, 5, 18])
def test_matches_k_diffusion_deterministic(kd, n_steps):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * SIGMA_MAX
    sigmas = make_sigmas("karras", n_steps, SIGMA_MIN, SIGMA_MAX)
    assert torch.allclose(kd.get_sigmas_karras(n_steps, SIGMA_MIN, SIGMA_MAX, 7.0, "cpu").double(), sigmas,
                          rtol=1e-6)
    den = lambda x, s: GMM.denoise(x, s)  # noqa: E731
    assert torch.allclose(classic.euler(den, x.clone(), sigmas), kd.sample_euler(den, x.clone(), sigmas, disable=True),
                          atol=1e-10)
    assert torch.allclose(classic.heun(den, x.clone(), sigmas), kd.sample_heun(den, x.clone(), sigmas, disable=True),
                          atol=1e-10)


def test_matches_k_diffusion_heun_with_churn(kd):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * SIGMA_MAX
    sigmas = make_sigmas("karras", 10, SIGMA_MIN, SIGMA_MAX)
    den = lambda x, s: GMM.denoise(x, s)  # noqa: E731
    opts = {"s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
    torch.manual_seed(7)
    ours = classic.heun(den, x.clone(), sigmas, churn=30.0, **opts)
    torch.manual_seed(7)
    ref = kd.sample_heun(den, x.clone(), sigmas, s_churn=30.0, disable=True, **opts)
    assert torch.allclose(ours, ref, atol=1e-10)


def test_seeds_reproduce_across_batch_sizes():
    seeds = list(range(10, 21))
    opts = {"sampler": "heun", "nfe": 9, "churn": 20.0, "progress": False}
    a = fd.generate(GMM.denoise, seeds, data_shape=(2,), batch=3, **opts)
    b = fd.generate(GMM.denoise, seeds, data_shape=(2,), batch=11, **opts)
    c = fd.generate(GMM.denoise, seeds[4:6], data_shape=(2,), batch=1, **opts)
    assert torch.equal(a, b)
    assert torch.equal(a[4:6], c)
    assert not torch.equal(a[0], a[1])


def test_sample_keeps_fp32_state_and_reaches_the_data():
    torch.manual_seed(0)
    out = fd.sample(GMM.denoise, torch.randn(2000, 2), sampler="heun", nfe=35)
    assert out.dtype == torch.float32
    # Every sample lands near one of the ring's modes (std 0.1).
    dist = torch.cdist(out.double(), GMM.means).min(dim=1).values
    assert float(dist.quantile(0.99)) < 0.5


@pytest.mark.parametrize("schedule", ["karras", "logsnr", "time-uniform", "quadratic"])
def test_every_schedule_runs_from_sigma_max_to_sigma_min_in_float64(schedule):
    grid = make_sigmas(schedule, 9, SIGMA_MIN, SIGMA_MAX)
    assert grid.dtype == torch.float64 and len(grid) == 10 and grid[-1] == 0
    assert grid[0].item() == pytest.approx(SIGMA_MAX, rel=1e-14)
    assert grid[-2].item() == pytest.approx(SIGMA_MIN, rel=1e-14)
    assert bool((grid[:-1] > grid[1:]).all())
