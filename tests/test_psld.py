"""PSLD process: closed-form kernel against the matrix exponential, ε / L^{-T} score, HSM and DSM losses, training."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import fastdiffusion as fd
from fastdiffusion.bench.psld_exact import PSLDMixtureEps
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.processes import make_process, process_from_config
from fastdiffusion.processes.psld import PSLD, apply_block, critical_flow, join, split

TIMES = [1e-5, 1e-3, 0.05, 0.3, 1.0]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small float64 ops: extra threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


def van_loan(process: PSLD, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean map and zero-start covariance of dz = ½ F̃ z du + D̃^{½} dW over u ∈ [0, b(t)] (the SDE in u = b(t)),
    from one 4×4 matrix exponential (Van Loan 1978)."""
    f, q = process.F_tilde().numpy() / 2, process.D_tilde().numpy()
    big = np.block([[f, q], [np.zeros((2, 2)), -f.T]]) * float(process.b(t))
    e = expm(big)
    return e[:2, :2], e[:2, 2:] @ e[:2, :2].T


@pytest.mark.parametrize("process", [PSLD(), PSLD(beta_min=0.1, beta_max=20.0), PSLD(Gamma=0.02, nu=4.02)])
def test_kernel_matches_matrix_exponential(process):
    for t in TIMES:
        mean, cov = van_loan(process, t)
        s0 = process.initial_cov().numpy()
        assert np.abs(process.kernel_mean_matrix(t).numpy() - mean).max() <= 1e-10
        assert np.abs(process.kernel_cov(t, "dsm").numpy() - cov).max() <= 1e-10
        assert np.abs(process.kernel_cov(t).numpy() - (mean @ s0 @ mean.T + cov)).max() <= 1e-10


def test_kernel_solves_the_moment_equations_in_t():
    """dΣ/dt = F Σ + Σ Fᵀ + G Gᵀ with the time-varying β(t) (checks b(t) and the HSM start Σ₀ = diag(0, γM))."""
    p = PSLD(beta_min=0.1, beta_max=20.0)

    def rhs(t, y):
        s, f, g = y.reshape(2, 2), p.drift_matrix(t).numpy(), p.diffusion_matrix(t).numpy()
        return (f @ s + s @ f.T + g @ g.T).ravel()

    sol = solve_ivp(rhs, (0, 1), p.initial_cov().numpy().ravel(), t_eval=TIMES[1:], method="DOP853", rtol=1e-12,
                    atol=1e-14)
    for k, t in enumerate(TIMES[1:]):
        assert np.abs(sol.y[:, k].reshape(2, 2) - p.kernel_cov(t).numpy()).max() <= 1e-10


def test_critical_flow_series_and_closed_form_agree():
    p = PSLD()
    u = torch.tensor([0.0999, 0.1001, 0.2499, 0.2501, 1.0], dtype=torch.float64)  # x = −(Γ+ν)u/2 crosses ±½
    mean, cov = critical_flow(p.F_tilde(), p.D_tilde(), u)
    for k in range(len(u)):
        ref_mean, ref_cov = (torch.from_numpy(a) for a in van_loan_u(p, float(u[k])))
        assert torch.allclose(mean[k], ref_mean, atol=1e-13) and torch.allclose(cov[k], ref_cov, atol=1e-13)


def van_loan_u(p: PSLD, u: float):
    f, q = p.F_tilde().numpy() / 2, p.D_tilde().numpy()
    e = expm(np.block([[f, q], [np.zeros((2, 2)), -f.T]]) * u)
    return e[:2, :2], e[:2, 2:] @ e[:2, :2].T


def test_stationary_law_and_reverse_sub_flows():
    p = PSLD()
    h_inv = torch.linalg.inv(p.H())
    assert torch.allclose(p.kernel_cov(40.0), h_inv, atol=1e-10)  # the prior N(0, diag(1, M))
    mean, cov = p.reverse_ou(0.7, 0.4)  # SSCS's exact part and OBA's O both leave N(0, H⁻¹) invariant
    assert torch.allclose(mean @ h_inv @ mean.T + cov, h_inv, atol=1e-12)
    decay, var = p.friction_flow(0.7, 0.4, 0.5, 1.0)
    assert torch.allclose(decay @ h_inv @ decay.T + var, h_inv, atol=1e-12)
    assert p.M_inv == pytest.approx(4.0) and (p.nu - p.Gamma) ** 2 == pytest.approx(4 * p.M_inv)


def test_cholesky_and_eps_score_parameterisation():
    p = PSLD()
    t = torch.tensor(TIMES, dtype=torch.float64)
    chol = p.kernel_chol(t)
    assert torch.allclose(chol @ chol.transpose(-1, -2), p.kernel_cov(t), rtol=1e-12, atol=1e-18)
    assert (chol[..., 0, 1] == 0).all()
    eps = torch.randn(5, 6, dtype=torch.float64)
    for tt in TIMES:
        assert torch.allclose(p.eps_from_score(p.score_from_eps(eps, tt), tt), eps, atol=1e-10)


@pytest.mark.parametrize("t", [1e-3, 0.02, 0.3, 1.0])
def test_exact_mixture_score_matches_autograd(t):
    p, mix = PSLD(), GaussianMixture.random(3, 4, seed=5, component_std=0.3)
    exact = PSLDMixtureEps(mix, p)
    z = torch.randn(64, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = z * p.kernel_cov(t).diagonal().sqrt().repeat_interleave(3)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact.log_prob(zz, t).sum(), zz)
    # −L^{-T} ε* is the score: the ε-network's output turned back into a score by the process
    assert torch.allclose(p.score_from_eps(exact(z, t), t), grad, rtol=1e-9, atol=1e-9 * grad.abs().max())
    assert torch.allclose(exact.score(z, torch.full((64,), t, dtype=torch.float64)), grad, rtol=1e-9,
                          atol=1e-9 * grad.abs().max())


@pytest.mark.parametrize("loss", ["hsm", "dsm"])
def test_losses_are_minimised_by_the_exact_eps(loss):
    p, mix = PSLD(loss=loss), GaussianMixture.ring2d()
    exact = PSLDMixtureEps(mix, p)
    gen = torch.Generator().manual_seed(0)
    n = 4096
    x0 = mix.sample(n, gen)
    t = p.sample_sigma(n, gen)
    noise = torch.randn(p.noise_shape(x0.shape), generator=gen, dtype=torch.float64)
    assert noise.shape == (n, 4 if loss == "hsm" else 6)

    best = p.training_loss(exact, x0, t, noise)  # the exact ε, each row at its own time
    assert math.isfinite(best)
    for delta in (0.1, -0.1):
        worse = p.training_loss(lambda z, tt, d=delta: exact(z, tt) + d, x0, t, noise)
        assert best < worse
    if loss == "hsm":  # the HSM target is ε itself, so the exact ε must beat predicting 0 by a margin
        assert best < 0.9 * p.training_loss(lambda z, tt: torch.zeros_like(z), x0, t, noise)


def test_perturbation_has_the_kernel_moments():
    p = PSLD()
    n, t = 200_000, torch.tensor(0.1, dtype=torch.float64)
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    for loss in ("hsm", "dsm"):
        q = PSLD(loss=loss)
        z, _ = q.perturb(x0, t.expand(n), torch.randn(q.noise_shape(x0.shape), generator=gen, dtype=torch.float64))
        mean = q.kernel_mean_matrix(t)[:, 0] * 0.5
        cov = torch.cov(z.T)
        assert torch.allclose(z.mean(0), mean, atol=5e-3)
        assert torch.allclose(cov, p.kernel_cov(t), atol=5e-3)  # either loss samples the same marginal


def test_make_process_and_config_round_trip():
    p = make_process("psld", Gamma=0.02, nu=4.02, loss="dsm")
    q = process_from_config(p.config())
    assert q.config() == p.config() and isinstance(q, PSLD)
    assert make_process("edm").name == "edm"
    with pytest.raises(UserError):
        make_process("psld", Gamma=-1.0)
    with pytest.raises(UserError):
        make_process("psld", loss="nll")
    with pytest.raises(UserError):
        make_process("psld", M=3)


def test_split_join_and_blocks():
    z = torch.arange(24.0).reshape(2, 4, 3)
    x, m = split(z)
    assert torch.equal(join(x, m), z)
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = apply_block(a, z)
    assert torch.equal(split(out)[0], x + 2 * m) and torch.equal(split(out)[1], 3 * x + 4 * m)


def test_train_psld_on_a_toy_and_sample_its_checkpoint(tmp_path):
    from fastdiffusion.cli import main

    run = tmp_path / "run"
    rc = main(["train", "--process", "psld", "--data", "gmm", "--net", "mlp", "--net-opt", "width=32",
               "--net-opt", "num_blocks=1", "--steps", "4", "--batch", "32", "--ckpt-every", "4", "--log-every", "2",
               "--grid-sampler", "sscs", "--grid-nfe", "4", "--grid-images", "16", "--run-dir", str(run), "--quiet"])
    assert rc == 0
    model = fd.load_model(run)
    assert model.net_config["in_channels"] == 4 and model.net_config["out_channels"] == 4
    assert model.process.config() == PSLD().config()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for sampler in ("sscs", "rvv", "csps-d"):
        x = fd.sample(model, noise, sampler=sampler, nfe=5, noise_fn=fd.SeededNoise(range(8)))
        assert x.shape == (8, 2) and torch.isfinite(x).all()
    with pytest.raises(UserError, match="psld model"):
        fd.sample(model, noise, sampler="heun", nfe=5)
