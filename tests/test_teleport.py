"""Gaussian data (processes.gaussian_data, data.stats): the closed-form denoiser and PF-ODE flow, statistics from
samples, and the two shortcuts built on them -- the analytic first step (afs) and the teleport -- with honest NFE
counts."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import fastdiffusion as fd
from fastdiffusion.bench.edm_exact import MixtureDenoiser
from fastdiffusion.cli import main
from fastdiffusion.data import load_dataset
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.data.stats import STATS_FILE, compute_stats, resolve_data_stats
from fastdiffusion.errors import UserError
from fastdiffusion.processes.gaussian_data import GaussianDataStats
from fastdiffusion.samplers import get_sampler, make_sigmas
from fastdiffusion.samplers.counted import CountedModel


def low_rank_stats(d: int = 8, k: int = 2, residual: float = 0.3, seed: int = 0) -> GaussianDataStats:
    """mu, an orthonormal U (d, k), lam and r drawn at random: Sigma = U diag(lam) U^T + r (I - U U^T)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    lam = 0.5 + 4 * torch.rand(k, generator=g, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return GaussianDataStats(mu, u, lam, residual, (d,))


def pf_ode_solve(stats: GaussianDataStats, x: torch.Tensor, sigma_a: float, sigma_b: float) -> torch.Tensor:
    """EDM's PF-ODE dx/du = x - D(x, e^u), u = ln sigma, with the Gaussian denoiser built from the dense covariance
    (not from the closed form under test), float64 DOP853 at rtol 1e-12."""
    mu, cov = stats.mean, stats.covariance()
    eye = torch.eye(stats.dim, dtype=torch.float64)

    def rhs(u, flat):
        y = torch.from_numpy(flat).reshape(x.shape) - mu
        denoised = mu + torch.linalg.solve(cov + math.exp(2 * u) * eye, cov @ y.T).T
        return (y + mu - denoised).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_a), math.log(sigma_b)), x.reshape(-1).numpy(), method="DOP853",
                    rtol=1e-12, atol=1e-12)
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(x.shape)


@pytest.mark.parametrize("stats", [low_rank_stats(), GaussianDataStats.from_covariance(
    torch.zeros(5), torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.1, 0.0], dtype=torch.float64)))],
    ids=["low-rank+residual", "full-rank"])
@pytest.mark.parametrize(("sigma_a", "sigma_b"), [(80.0, 10.0), (80.0, 0.3), (5.0, 0.05)])
def test_transport_equals_a_high_accuracy_pf_ode_solve(stats, sigma_a, sigma_b):
    x = torch.randn(6, stats.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigma_a
    exact = pf_ode_solve(stats, x, sigma_a, sigma_b)
    got = stats.transport(x, sigma_a, sigma_b)
    assert torch.allclose(got, exact, rtol=1e-8, atol=1e-8 * sigma_b), (got - exact).abs().max()


def test_gaussian_denoiser_equals_the_exact_one_component_mixture():
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(1, 6, generator=g, dtype=torch.float64)
    var = torch.tensor([[3.0, 0.7, 0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)  # two directions + residual 0.2
    mixture = GaussianMixture(mean, var, torch.ones(1))
    x = torch.randn(16, 6, generator=g, dtype=torch.float64) * 4
    sigma = torch.logspace(-2, 2, 16, dtype=torch.float64)  # one noise level per row
    full = GaussianDataStats.from_mixture(mixture)
    low = GaussianDataStats.from_mixture(mixture, rank=2)
    assert low.rank == 2 and low.residual == pytest.approx(0.2, abs=1e-12)
    for stats in (full, low):
        assert torch.allclose(stats.denoise(x, sigma), mixture.denoise(x, sigma), rtol=0, atol=1e-12)
        assert torch.allclose(stats.denoise(x, 0.7), mixture.denoise(x, 0.7), rtol=0, atol=1e-12)


def test_mixture_moments_match_samples():
    mixture = GaussianMixture.random(3, 4, seed=5)
    stats = GaussianDataStats.from_mixture(mixture)
    draws = mixture.sample(400_000, torch.Generator().manual_seed(0))
    assert torch.allclose(stats.mean, draws.mean(0), atol=0.01)
    assert torch.allclose(stats.covariance(), torch.cov(draws.T), atol=0.02)


def exact_samples(stats: GaussianDataStats, n: int, seed: int = 0) -> torch.Tensor:
    """n samples whose empirical mean and (1/n) covariance are exactly the statistics' own."""
    z = torch.randn(n, stats.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(z.T @ z / n)
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # now z^T z / n = I
    root = torch.linalg.cholesky(stats.covariance())
    return stats.mean + z @ root.T


@pytest.mark.parametrize("how", ["tensor", "batches", "iterator", "randomized"])
def test_stats_from_samples_recover_a_known_low_rank_plus_residual_covariance(how):
    truth = low_rank_stats(d=48, k=3, residual=0.05, seed=3)
    x = exact_samples(truth, 600)
    batches = list(x.split(128))
    data = {"tensor": x, "batches": batches, "iterator": iter(batches), "randomized": batches}[how]
    stats = compute_stats(data, rank=3, max_dense=16 if how == "randomized" else 12288, oversample=8, power_iters=8)
    assert ("randomized" in stats.info["method"]) == (how == "randomized") and stats.info["n"] == 600
    assert torch.allclose(stats.mean, truth.mean, atol=1e-12)
    assert stats.residual == pytest.approx(0.05, abs=1e-10)
    assert torch.allclose(stats.eigenvalues, truth.eigenvalues.sort(descending=True).values, atol=1e-9)
    assert torch.allclose(stats.covariance(), truth.covariance(), atol=1e-9)


def test_stats_of_uint8_images_use_the_training_scale_and_flips():
    u8 = torch.randint(0, 256, (50, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    scaled = u8.double() / 127.5 - 1
    stats = compute_stats(u8)
    assert stats.data_shape == (1, 4, 4) and torch.allclose(stats.mean, scaled.reshape(50, -1).mean(0))
    flipped = compute_stats(u8, flip=True)
    both = torch.cat([scaled, scaled.flip(-1)]).reshape(100, -1)
    assert flipped.info["n"] == 100 and torch.allclose(flipped.covariance(), torch.cov(both.T, correction=0))
    with pytest.raises(UserError, match="re-iterable"):
        compute_stats(iter(list(u8.split(10))), max_dense=8)


def test_stats_file_round_trip_and_bad_files(tmp_path):
    stats = low_rank_stats()
    stats.info["source"] = "test"
    stats.save(tmp_path / "s.safetensors")
    back = GaussianDataStats.load(tmp_path / "s.safetensors")
    for name in ("mean", "basis", "eigenvalues"):
        assert torch.equal(getattr(back, name), getattr(stats, name))
    assert back.residual == stats.residual and back.info["source"] == "test" and len(back.info["sha256"]) == 64
    fd.save_model(_tiny_model(), tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="not a data statistics file"):
        GaussianDataStats.load(tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="no such"):
        GaussianDataStats.load(tmp_path / "missing.safetensors")


# -- the shortcuts in fd.sample ---------------------------------------------------------------------------------

MIX = GaussianMixture.random(4, 3, seed=7)
MIX_STATS = GaussianDataStats.from_mixture(MIX)


def _run(sampler, nfe, **kw):
    """fd.sample on the exact mixture denoiser; returns the output, the network calls and their noise levels."""
    seen = []

    def network(x, sigma):
        seen.append(float(sigma[0]))
        return MixtureDenoiser(MIX)(x, sigma)

    counted = CountedModel(network)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fd.sample(counted, noise, sampler=sampler, nfe=nfe, data_stats=MIX_STATS, **kw)
    return out, counted.calls, seen


@pytest.mark.parametrize(("sampler", "nfe"), [("heun", 5), ("dpmpp-2m", 4), ("ipndm", 6), ("euler", 1)])
def test_teleport_spends_exactly_n_network_calls_below_sigma_t(sampler, nfe):
    _, calls, seen = _run(sampler, nfe, teleport=10.0)
    assert calls == nfe and seen[0] == pytest.approx(10.0) and max(seen) <= 10.0 + 1e-9


def test_teleport_starts_the_sampler_from_the_exact_gaussian_flow():
    """Teleport = the prior sample moved by the closed form, then the sampler on a grid over [sigma_min, sigma_T]."""
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = []
    fd.sample(CountedModel(MixtureDenoiser(MIX)), noise, sampler="euler", nfe=3, teleport=10.0,
              data_stats=MIX_STATS, callback=lambda info: start.append(info) if info["i"] == 0 else None)
    sigmas = make_sigmas("karras", 3, 0.002, 10.0)
    x_t = MIX_STATS.transport(noise.float() * 80.0, 80.0, 10.0)
    expect = x_t + (sigmas[1] - sigmas[0]) * (x_t - MixtureDenoiser(MIX)(x_t, sigmas[0])) / sigmas[0]
    assert torch.allclose(start[0]["x"].double(), expect.double(), atol=1e-5)


@pytest.mark.parametrize(("sampler", "nfe"), [("heun", 4), ("dpmpp-2m", 3), ("ipndm", 5), ("euler", 1)])
def test_afs_makes_n_network_calls_on_the_grid_of_n_plus_one(sampler, nfe):
    out, calls, seen = _run(sampler, nfe, afs=True)
    assert calls == nfe
    spec = get_sampler(sampler)
    grid = make_sigmas(spec.schedule, spec.steps(nfe + 1), 0.002, 80.0)
    assert 80.0 not in seen and seen[0] == pytest.approx(float(grid[1]))
    # the same as the sampler run by hand on that grid with the Gaussian answering its first call
    answers = iter([MIX_STATS.denoise])
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def by_hand(x, sigma):
        return next(answers, MixtureDenoiser(MIX))(x, sigma)

    manual = fd.sample(CountedModel(by_hand), noise, sampler=sampler, nfe=nfe + 1)
    assert torch.equal(out, manual)


def test_afs_progress_bar_counts_network_calls_only(monkeypatch):
    import fastdiffusion.sampling as sampling

    bars = []

    class Bar:
        def __init__(self, total, desc, **kw):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(sampling, "tqdm", Bar)
    _run("dpmpp-2m", 3, afs=True, teleport=20.0, progress=True)
    assert bars[0].total == 3 and bars[0].n == 3 and "+1 analytic" in bars[0].desc and "sigma 20" in bars[0].desc


def test_bad_shortcut_requests_are_one_line_user_errors():
    noise = torch.randn(2, 4)
    den = MixtureDenoiser(MIX)
    with pytest.raises(UserError, match="mean and covariance"):
        fd.sample(den, noise, sampler="euler", nfe=3, afs=True)
    with pytest.raises(UserError, match="between sigma_min"):
        fd.sample(den, noise, sampler="euler", nfe=3, teleport=100.0, data_stats=MIX_STATS)
    assert torch.equal(fd.sample(den, noise, sampler="euler", nfe=3, data_stats=MIX_STATS),
                       fd.sample(den, noise, sampler="euler", nfe=3))  # statistics alone change nothing
    with pytest.raises(UserError, match="use --nfe 4 or 6"):
        fd.sample(den, noise, sampler="heun", nfe=5, afs=True, data_stats=MIX_STATS)
    with pytest.raises(UserError, match="shape"):
        fd.sample(den, torch.randn(2, 5), sampler="euler", nfe=3, afs=True, data_stats=MIX_STATS)
    with pytest.raises(UserError, match="must start at the teleport level"):
        fd.sample(den, noise, sampler="euler", nfe=2, teleport=10.0, data_stats=MIX_STATS,
                  sigmas=torch.tensor([20.0, 1.0, 0.0]))


def _tiny_model(label_dim=0):
    from test_guidance import tiny_model

    return tiny_model(label_dim=label_dim)


def test_afs_with_guidance_calls_the_network_n_times():
    model = _tiny_model(label_dim=10)
    calls = []
    model.net.register_forward_hook(lambda net, args, out: calls.append(args[0].shape[0]))
    stats = GaussianDataStats(torch.zeros(64), torch.eye(64)[:, :4], torch.ones(4), 0.1, (1, 8, 8))
    with torch.no_grad():
        fd.sample(model, torch.randn(3, 1, 8, 8), sampler="euler", nfe=3, afs=True, data_stats=stats,
                  class_labels=2, guidance=2.0)
    assert calls == [6, 6, 6]  # 3 guided calls, each one network call on [x; x]


# -- where statistics come from, and the CLI ------------------------------------------------------------------

TINY = ["--data", "digits", "--net", "ddpmpp-tiny", "--batch", "16", "--steps", "4", "--ckpt-every", "4",
        "--grid-images", "4", "--grid-nfe", "3", "--quiet", "--data-split", "train"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("teleport") / "run"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    return run


def test_sample_cli_teleport_and_afs_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "t.npz"
    args = ["sample", str(run_dir), "--seeds", "0-3", "--quiet"]
    assert main([*args, "--sampler", "dpmpp-2m", "--nfe", "3", "--teleport", "10", "--out", str(out)]) == 0
    assert "dpmpp-2m, 3 NFE; teleport to sigma = 10 (data statistics: digits@train)" in capsys.readouterr().out
    cached = run_dir / STATS_FILE  # computed from the run's recorded training data and cached in the run directory
    stats = GaussianDataStats.load(cached)
    assert stats.data_shape == (1, 8, 8) and stats.info["n"] == len(load_dataset("digits", split="train"))
    from fastdiffusion.plots import to_uint8

    with torch.no_grad():
        expect = fd.generate(fd.load_model(run_dir), list(range(4)), sampler="dpmpp-2m", nfe=3, teleport=10.0,
                             data_stats=stats, progress=False)
    assert np.array_equal(np.load(out)["samples"], to_uint8(expect))
    assert main([*args, "--sampler", "heun", "--nfe", "4", "--afs", "--out", str(tmp_path / "a.png")]) == 0
    assert "heun, 4 NFE; analytic first step" in capsys.readouterr().out
    assert main([*args, "--nfe", "3", "--afs", "--data-stats", "digits@test", "--out", str(tmp_path / "b.png")]) == 2
    assert "heun cannot make: use --nfe 2 or 4" in capsys.readouterr().err
    assert main([*args, "--nfe", "3", "--data-stats", "digits", "--out", str(tmp_path / "c.png")]) == 2
    assert "--data-stats is used only by" in capsys.readouterr().err


def test_a_schedule_tuned_for_one_more_call_runs_with_afs(run_dir, tmp_path):
    sched, out = tmp_path / "s.json", tmp_path / "x.npz"
    assert main(["tune", str(run_dir), "--sampler", "ipndm", "--nfe", "4", "--seeds", "0-3", "--max-evals", "4",
                 "--out", str(sched)]) == 0
    grid = torch.tensor(json.loads(sched.read_text())["sigmas"], dtype=torch.float64)
    assert main(["sample", str(run_dir), "--seeds", "0-3", "--quiet", "--sampler", "ipndm", "--nfe", "3", "--afs",
                 "--schedule", str(sched), "--out", str(out)]) == 0
    from fastdiffusion.plots import to_uint8

    with torch.no_grad():
        expect = fd.generate(fd.load_model(run_dir), list(range(4)), sampler="ipndm", nfe=3, sigmas=grid, afs=True,
                             data_stats=GaussianDataStats.load(run_dir / STATS_FILE), progress=False)
    assert np.array_equal(np.load(out)["samples"], to_uint8(expect))
    assert main(["sample", str(run_dir), "--seeds", "0-3", "--quiet", "--sampler", "ipndm", "--nfe", "4", "--afs",
                 "--schedule", str(sched), "--out", str(out)]) == 2  # 5 calls asked of a 4-call grid


def test_eval_cli_records_the_shortcuts_in_its_protocol(run_dir, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["eval", str(run_dir), "--metrics", "fd-digits", "--n", "8", "--sampler", "euler", "--nfe", "2",
                 "--afs", "--teleport", "20", "--data-stats", "digits@test", "--quiet", "--out", str(report)]) == 0
    assert "analytic first step, teleport to sigma = 20" in capsys.readouterr().out
    pr = json.loads(report.read_text())["results"]["fd-digits"]["protocol"]
    assert pr["afs"] is True and pr["teleport"] == 20.0 and pr["nfe"] == 2
    assert pr["data_stats"]["source"] == "digits@test" and pr["data_stats"]["rank"] == 64


def test_stats_resolution_prefers_the_file_beside_the_model(run_dir, tmp_path):
    model_file = tmp_path / "m.safetensors"
    fd.save_model(fd.load_model(run_dir), model_file)
    with pytest.raises(UserError, match="--data-stats"):
        resolve_data_stats(model_file, None, (1, 8, 8))  # a bare model file: no run config, no statistics
    mine = low_rank_stats(d=64, k=2)
    mine = GaussianDataStats(mine.mean, mine.basis, mine.eigenvalues, 0.1, (1, 8, 8), {"source": "mine"})
    mine.save(tmp_path / STATS_FILE)
    assert resolve_data_stats(model_file, None, (1, 8, 8)).info["source"] == "mine"
    with pytest.raises(UserError, match="shape"):
        resolve_data_stats(model_file, None, (1, 16, 16))
    assert resolve_data_stats(model_file, "digits@test", (1, 8, 8)).info["source"] == "digits@test"
