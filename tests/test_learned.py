"""Learned solver parameters (samplers.learned): DPM-Solver++'s per-step options, gradients through the sampler, and
the fit on exact scores, fresh noise and a tiny model through the CLI."""

import json

import numpy as np
import pytest
import torch

import fastdiffusion as fd
from fastdiffusion.bench.edm_exact import MixtureDenoiser
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.samplers import get_sampler, make_sigmas
from fastdiffusion.samplers.counted import CountedModel, run_counted
from fastdiffusion.samplers.learned import learnable_samplers
from fastdiffusion.samplers.tuning import endpoint_distance, reference_solve

# Nearly degenerate components (std 0.02 off a few axes): the hard case where a grid alone gains little.
MIX = GaussianMixture(0.8 * torch.randn(6, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                      torch.full((6, 8), 0.02**2, dtype=torch.float64).index_fill_(1, torch.tensor([0, 1]), 0.25),
                      torch.ones(6, dtype=torch.float64))
DENOISE = MixtureDenoiser(MIX)


def noise(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, MIX.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def learned():
    z = noise(1, 128)
    ref = reference_solve(DENOISE, z)
    return z, ref, fd.learn_schedule(DENOISE, sampler="dpmpp-2m", nfe=5, noise=z, reference=ref, iterations=100,
                                  lr=0.03)


def test_default_per_step_options_are_the_plain_sampler():
    z = 80 * noise(0, 16)
    sigmas = make_sigmas("logsnr", 6, 0.002, 80.0)
    for sampler in ("dpmpp-2m", "dpmpp-3m"):
        plain = fd.sample(DENOISE, z, sampler=sampler, nfe=6, sigmas=sigmas)
        same = fd.sample(DENOISE, z, sampler=sampler, nfe=6, sigmas=sigmas, call_sigmas=sigmas[:-1],
                         corrections=torch.zeros(6))
        torch.testing.assert_close(same, plain, rtol=0, atol=0)


def test_call_sigmas_set_the_network_levels_and_corrections_scale_the_second_order_term():
    sigmas = make_sigmas("logsnr", 4, 0.002, 80.0)
    calls = sigmas[:-1] * torch.tensor([1.0, 1.3, 0.8, 1.1], dtype=torch.float64)
    seen = []

    def record(x, sigma):
        seen.append(float(sigma[0]))
        return DENOISE(x, sigma)

    z = noise(0, 4)
    fd.sample(record, z, sampler="dpmpp-2m", nfe=4, sigmas=sigmas, call_sigmas=calls)
    np.testing.assert_allclose(seen, calls.tolist(), rtol=1e-6)  # the state, and so sigma, is fp32
    # x_2 = e^-h x_1 + w0 D_1 + (1 + c_1) w0 (D_1 - D_0) / (2 r), r = h_0 / h_1; with D = 0 at sigma_0 = 80 and D = x
    # below, D_1 - D_0 = x_1, so c_1 moves x_2 by c_1 w0 x_1 / (2 r).
    def toy(x, sigma):
        return x if float(sigma[0]) < 20 else torch.zeros_like(x)

    def states(c):
        out = []
        fd.sample(toy, z, sampler="dpmpp-2m", nfe=4, sigmas=sigmas, corrections=[0.0, c, 0.0, 0.0],
                  callback=lambda info: out.append(info["x"]))
        return out

    lam = -torch.log(sigmas[:3])
    h, r = float(lam[2] - lam[1]), float((lam[1] - lam[0]) / (lam[2] - lam[1]))
    plain, scaled = states(0.0), states(0.5)
    torch.testing.assert_close(scaled[1] - plain[1], 0.5 * -np.expm1(-h) / (2 * r) * plain[0], rtol=1e-5, atol=1e-5)


def test_the_endpoint_is_differentiable_in_the_grid_and_the_per_step_parameters():
    z = noise(2, 8)
    sigmas = make_sigmas("logsnr", 5, 0.002, 80.0)
    inner = sigmas[1:-2].clone().requires_grad_()
    shifts = torch.full((5,), 0.05, dtype=torch.float64, requires_grad=True)
    scales = torch.full((5,), 0.1, dtype=torch.float64, requires_grad=True)

    def end(inner, shifts, scales):
        grid = torch.cat([sigmas[:1], inner, sigmas[-2:]])
        out = run_counted(get_sampler("dpmpp-2m"), CountedModel(DENOISE), 80 * z, grid, 5, differentiable=True,
                          call_sigmas=grid[:-1] * torch.exp(shifts), corrections=scales)  # float64, unlike sample
        return out.sum()

    torch.autograd.gradcheck(end, (inner, shifts, scales), eps=1e-6, atol=1e-5, rtol=1e-4)
    # without `differentiable` no graph is kept
    out = fd.sample(DENOISE, z, sampler="dpmpp-2m", nfe=5, sigmas=torch.cat([sigmas[:1], inner, sigmas[-2:]]))
    assert not out.requires_grad


def test_learned_fit_is_a_valid_grid_with_exactly_nfe_calls(learned):
    z, ref, tuned = learned
    s = tuned.sigmas
    assert s[-1] == 0 and bool((s[:-1] > s[1:]).all()) and not s.requires_grad
    assert float(s[0]) == 80.0 and float(s[-2]) == pytest.approx(0.002)
    assert set(tuned.hyper) == {"call_sigmas", "corrections"} and len(tuned.hyper["call_sigmas"]) == 5
    counted = CountedModel(DENOISE)
    again = fd.sample(counted, z, sampler="dpmpp-2m", nfe=5, sigmas=s, **tuned.hyper)
    assert counted.calls == 5
    assert endpoint_distance(again, ref.endpoint) == pytest.approx(tuned.value, rel=1e-6)


def test_learned_fit_beats_the_grid_fit_on_fresh_noise(learned):
    z, ref, tuned = learned
    assert tuned.value < 0.8 * min(tuned.start_values.values())
    fitted = fd.tune_schedule(DENOISE, sampler="dpmpp-2m", nfe=5, noise=z, max_evals=100)
    fresh = noise(3, 256)
    exact = reference_solve(DENOISE, fresh).endpoint

    def error(**grid):
        return endpoint_distance(fd.sample(DENOISE, fresh, sampler="dpmpp-2m", nfe=5, **grid), exact)

    plain = min(error(schedule=name) for name in ("karras", "logsnr"))
    assert error(sigmas=tuned.sigmas, **tuned.hyper) < 0.6 * min(plain, error(sigmas=fitted)), (
        error(sigmas=tuned.sigmas, **tuned.hyper), plain, error(sigmas=fitted))


def test_learned_fit_at_two_calls_learns_the_levels_alone():
    """NFE 2: no interior level and no second-order step (the corrections stay 0), the two call levels move."""
    tuned = fd.learn_schedule(DENOISE, sampler="dpmpp-2m", nfe=2, noise=noise(1, 16), iterations=3)
    assert tuned.sigmas.tolist() == [80.0, pytest.approx(0.002), 0.0]
    assert tuned.hyper["corrections"] == [0.0, 0.0] and tuned.hyper["call_sigmas"] != [80.0, 0.002]


def test_learned_fit_refuses_what_it_cannot_learn():
    z = noise(1, 8)
    assert learnable_samplers() == ["dpmpp-2m", "dpmpp-3m"]
    with pytest.raises(UserError, match="'ipndm' has no per-step parameters to learn; choose one of dpmpp-2m"):
        fd.learn_schedule(DENOISE, sampler="ipndm", nfe=5, noise=z)
    with pytest.raises(UserError, match="--iterations must be >= 1"):
        fd.learn_schedule(DENOISE, sampler="dpmpp-2m", nfe=5, noise=z, iterations=0)
    with pytest.raises(UserError, match="option call_sigmas takes 5 finite numbers at NFE 5, one per step"):
        fd.sample(DENOISE, z, sampler="dpmpp-2m", nfe=5, call_sigmas=[1.0, 2.0])
    for bad in ([0.0, 0.0, float("nan"), 0.0, 0.0], 0.1, "x"):  # 0.1 and "x": what `--opt corrections=...` gives
        with pytest.raises(UserError, match="option corrections takes 5 finite numbers"):
            fd.sample(DENOISE, z, sampler="dpmpp-2m", nfe=5, corrections=bad)


def test_tune_learn_then_sample_takes_the_learned_options(tmp_path):
    """`fastdiffusion tune --learn` on a tiny model: its file drives `sample`, with the per-step options."""
    from test_tuning import tiny_model_file

    from fastdiffusion.cli import main

    path = tiny_model_file(tmp_path, "edm")
    sched = tmp_path / "s.json"
    assert main(["tune", str(path), "--sampler", "dpmpp-2m", "--nfe", "4", "--seeds", "0-7", "--learn",
                 "--iterations", "3", "--out", str(sched)]) == 0
    saved = json.loads(sched.read_text())
    assert "learned by Adam, 3 steps" in saved["protocol"]["objective"]
    grid = torch.tensor(saved["sigmas"], dtype=torch.float64)
    assert main(["sample", str(path), "--sampler", "dpmpp-2m", "--nfe", "4", "--schedule", str(sched), "--seeds",
                 "0-3", "--out", str(tmp_path / "x.npz")]) == 0
    want = fd.generate(fd.load_model(path), [0, 1, 2, 3], sampler="dpmpp-2m", nfe=4, sigmas=grid, progress=False,
                       **saved["hyper"])
    got = np.load(tmp_path / "x.npz")["samples"]
    np.testing.assert_array_equal(got, ((want.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                                  .permute(0, 2, 3, 1).numpy())
    assert main(["tune", str(path), "--sampler", "ipndm", "--nfe", "4", "--seeds", "0-7", "--learn",
                 "--out", str(sched)]) == 2
