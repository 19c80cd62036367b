"""PSLD on Gaussian data: the exact ε and PF-ODE flow against dense float64 references, and the PSLD teleport and
analytic first step in ``fd.sample``."""

import pytest
import torch
from test_teleport import low_rank_stats

import fastdiffusion as fd
from fastdiffusion.bench.psld_exact import pf_ode_solution
from fastdiffusion.errors import UserError
from fastdiffusion.processes import EDM, PSLD
from fastdiffusion.processes.psld import join, split
from fastdiffusion.samplers.counted import CountedModel
from fastdiffusion.samplers.splitting import final_step

PROC = PSLD()
STATS = low_rank_stats(d=6, k=2, residual=0.3)


class DenseGaussianEps:
    """ε = −L_tᵀ ∇log p_t(z) of Gaussian data from the dense (2D, 2D) covariance of z_t (not the code under test)."""

    process = PROC

    def __init__(self, stats):
        self.mu, self.cov = stats.mean, stats.covariance()

    def __call__(self, z, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        rows = []
        for i in range(z.shape[0]):
            ti = t[min(i, len(t) - 1)]
            (ax, am), s = PROC.kernel_mean_matrix(ti)[:, 0], PROC.kernel_cov(ti)
            eye = torch.eye(len(self.mu), dtype=torch.float64)
            cov = torch.cat([torch.cat([ax * ax * self.cov + s[0, 0] * eye, ax * am * self.cov + s[0, 1] * eye], 1),
                             torch.cat([ax * am * self.cov + s[0, 1] * eye, am * am * self.cov + s[1, 1] * eye], 1)])
            mean = torch.cat([ax * self.mu, am * self.mu])
            score = -torch.linalg.solve(cov, z[i].double() - mean)
            rows.append(PROC.eps_from_score(score[None], ti)[0])
        return torch.stack(rows).to(z.dtype)


def draws(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return join(torch.randn(n, STATS.dim, generator=g, dtype=torch.float64),
                2 * torch.randn(n, STATS.dim, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("t", [1.0, 0.3, 0.02, torch.tensor([1.0, 0.5, 0.3, 0.1, 0.02], dtype=torch.float64)],
                         ids=["1", "0.3", "0.02", "per-row"])
def test_gaussian_eps_equals_the_dense_covariance_reference(t):
    z = draws()
    got = PROC.gaussian_model(STATS)(z, t)
    assert torch.allclose(got, DenseGaussianEps(STATS)(z, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("t_from", "t_to"), [(1.0, 0.5), (1.0, 0.1), (0.4, 0.01)])
def test_gaussian_transport_equals_a_high_accuracy_pf_ode_solve(t_from, t_to):
    z = draws(seed=1)
    exact = pf_ode_solution(DenseGaussianEps(STATS), z, t_from, t_to, rtol=1e-11, atol=1e-11)
    got = PROC.gaussian_transport(STATS, z, t_from, t_to)
    assert torch.allclose(got, exact, rtol=1e-7, atol=1e-7), (got - exact).abs().max()


def test_gaussian_transport_keeps_the_batch_independent_and_the_dtype():
    z = draws(6, seed=2)
    whole = PROC.gaussian_transport(STATS, z.float(), 1.0, 0.3)
    assert whole.dtype == torch.float32
    assert torch.allclose(whole[3:], PROC.gaussian_transport(STATS, z[3:].float(), 1.0, 0.3))


def _run(sampler, nfe, **kw):
    """fd.sample of the Gaussian data's exact ε as the 'network': output, network calls and their times."""
    seen = []

    def network(z, t):
        seen.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return DenseGaussianEps(STATS)(z, t)

    counted = CountedModel(network, PROC)
    noise = torch.randn(8, STATS.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fd.sample(counted, noise, sampler=sampler, nfe=nfe, process=PROC, data_stats=STATS,
                    noise_fn=lambda x: torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                                                   dtype=x.dtype), **kw)
    return out, counted.calls, seen


@pytest.mark.parametrize(("sampler", "nfe", "first_at_t_t"), [("psld-conj", 4, True), ("csps-d", 5, True),
                                                              ("sscs", 6, False)])  # SSCS calls after a half step
def test_psld_teleport_spends_exactly_n_network_calls_below_t_t(sampler, nfe, first_at_t_t):
    _, calls, seen = _run(sampler, nfe, teleport=0.4)
    assert calls == nfe and 0.3 < max(seen) <= 0.4 + 1e-7  # t is passed in float32
    assert (seen[0] == pytest.approx(0.4)) == first_at_t_t


def test_psld_teleport_on_gaussian_data_beats_the_same_nfe_from_the_prior():
    """On Gaussian data the teleport is exact, so spending the NFE below t_T ends nearer the exact PF-ODE endpoint."""
    noise = torch.randn(8, STATS.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    momentum = torch.randn(8, STATS.dim, generator=torch.Generator().manual_seed(1))  # _run's draw of the state's dtype
    z_end = PROC.gaussian_transport(STATS, join(noise, PROC.M ** 0.5 * momentum).double(), PROC.T, PROC.eval_eps)
    eps = DenseGaussianEps(STATS)
    exact = split(final_step(eps, z_end, torch.tensor(PROC.eval_eps, dtype=torch.float64)))[0]
    errors = {}
    for teleport in (None, 0.1):
        out, _, _ = _run("psld-conj", 5, teleport=teleport, lam=0.0)
        errors[teleport] = float((out - exact).square().mean().sqrt())
    assert errors[0.1] < 0.25 * errors[None], errors


def test_psld_afs_answers_the_first_call_analytically():
    out, calls, seen = _run("psld-conj", 4, afs=True, lam=0.0)
    assert calls == 4 and PROC.T not in seen
    answers = iter([PROC.gaussian_model(STATS)])

    def by_hand(z, t):
        return next(answers, DenseGaussianEps(STATS))(z, t)

    noise = torch.randn(8, STATS.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    manual = fd.sample(CountedModel(by_hand, PROC), noise, sampler="psld-conj", nfe=5, process=PROC, lam=0.0,
                       noise_fn=lambda x: torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                                                      dtype=x.dtype))
    assert torch.allclose(out, manual, atol=1e-12)


def test_shortcuts_refuse_a_one_call_student_and_misfit_statistics():
    from fastdiffusion.models.model import OneStepGenerator
    from fastdiffusion.nets import build_net, net_config

    backbone = net_config("mlp", in_channels=2, width=16, num_blocks=1)
    cfg = net_config("dsno", in_channels=2, backbone=backbone, num_times=2, modes=1)
    student = OneStepGenerator(build_net(**cfg), EDM(), cfg, (2,), sigmas=[80.0, 0.0], cond_sigmas=[80.0, 0.002],
                               sigma_max=80.0)
    with pytest.raises(UserError, match="needs a diffusion model"):
        fd.sample(student, torch.randn(2, 2), teleport=5.0, data_stats=STATS)
    with pytest.raises(UserError, match="shape"):
        fd.sample(lambda z, t: torch.zeros_like(z), torch.randn(2, 1, 4, 4), process=PROC, teleport=0.5,
                  data_stats=STATS)
    with pytest.raises(UserError, match="between t_min"):
        fd.sample(lambda z, t: torch.zeros_like(z), torch.randn(2, 6), process=PROC, teleport=1.5, data_stats=STATS)
