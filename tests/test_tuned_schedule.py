"""The ``tuned`` schedule: valid grids for every sampler and level count, the log-sigma mapping to other ranges, the
tuning parameterisation, and a lower error than karras on a mixture the tuning never saw."""

import math

import numpy as np
import pytest
import torch

import fastdiffusion as fd
from fastdiffusion.bench import tuning as bench
from fastdiffusion.bench.edm_exact import MixtureDenoiser, exact_endpoint
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.samplers import get_sampler, make_sigmas, tuned

LO, HI = tuned.TUNED_RANGE


def positions(sigmas, lo, hi):
    """``t_i = ln(sigma_i/lo) / ln(hi/lo)`` of the positive levels."""
    return [math.log(s / lo) / math.log(hi / lo) for s in sigmas[:-1].tolist()]


@pytest.mark.parametrize("sampler", [*tuned.TUNED_T, "euler", None])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 11, 15, 40])
def test_tuned_grid_is_valid(sampler, n):
    sigmas = make_sigmas("tuned", n, LO, HI, sampler=sampler)
    assert sigmas.dtype == torch.float64 and len(sigmas) == n + 1
    assert sigmas[0] == HI and sigmas[-1] == 0
    if n > 1:
        assert sigmas[-2] == LO
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_tables_cover_nfe_3_to_10_and_are_used_verbatim():
    assert set(tuned.TUNED_T) >= {"ipndm", "lambda-ddim", "dpmpp-2m"}
    for sampler, table in tuned.TUNED_T.items():
        assert set(table) >= set(range(3, 11)), sampler
        for n, t in table.items():
            assert len(t) == n - 2
            got = positions(make_sigmas("tuned", n, LO, HI, sampler=sampler), LO, HI)
            assert np.allclose(got, [1.0, *t, 0.0], atol=1e-12)
    # samplers without a table (and callers that do not name one) get DEFAULT_SAMPLER's grid
    default = make_sigmas("tuned", 6, LO, HI, sampler=tuned.DEFAULT_SAMPLER)
    assert torch.equal(make_sigmas("tuned", 6, LO, HI, sampler="heun"), default)
    assert torch.equal(make_sigmas("tuned", 6, LO, HI), default)


@pytest.mark.parametrize(("lo", "hi"), [(0.01, 50.0), (0.002, 80.0), (1e-3, 14.6)])
def test_other_sigma_ranges_map_affinely_in_log_sigma(lo, hi):
    for n in (4, 8, 13):
        ref = positions(make_sigmas("tuned", n, LO, HI, sampler="ipndm"), LO, HI)
        sigmas = make_sigmas("tuned", n, lo, hi, sampler="ipndm")
        assert math.isclose(sigmas[0], hi) and math.isclose(sigmas[-2], lo, rel_tol=1e-12)
        assert np.allclose(positions(sigmas, lo, hi), ref, atol=1e-12)


def test_untuned_level_counts_resample_the_largest_table():
    table = tuned.TUNED_T["ipndm"]
    m = max(table)
    points = [1.0, *table[m], 0.0]
    assert tuned.resample(points, m) == pytest.approx(points, abs=1e-15)
    got = tuned.tuned_positions(2 * m - 1, "ipndm")  # every second point is a stored one
    assert got[::2] == pytest.approx(points, abs=1e-15)
    assert got[1::2] == pytest.approx([(a + b) / 2 for a, b in zip(points[:-1], points[1:], strict=True)])


def test_tuning_parameterisation_round_trips():
    sigmas = make_sigmas("karras", 7, bench.SIGMA_MIN, bench.SIGMA_MAX)
    assert torch.allclose(bench.grid_from_logits(bench.logits_from_grid(sigmas)), sigmas, rtol=1e-12)
    grid = bench.grid_from_logits(np.array([30.0, -20.0, 0.5]))  # extreme logits still give a valid grid
    assert grid[0] == bench.SIGMA_MAX and grid[-2] == bench.SIGMA_MIN
    steps = -torch.diff(grid[:-1].log()) / math.log(bench.SIGMA_MAX / bench.SIGMA_MIN)
    assert float(steps.min()) >= bench.MIN_STEP * (1 - 1e-9) and math.isclose(float(steps.sum()), 1.0)
    t = bench.interior_positions(grid)
    assert torch.allclose(bench.grid_from_positions(t), grid, rtol=1e-5)


def test_sample_and_cli_accept_the_tuned_schedule():
    calls = []

    def model(x, sigma):
        calls.append(float(sigma.reshape(-1)[0]))  # sample() passes one sigma per row
        return torch.zeros_like(x)

    fd.sample(model, torch.randn(2, 2), sampler="ipndm", nfe=5, schedule="tuned", sigma_min=LO, sigma_max=HI)
    assert calls == pytest.approx(make_sigmas("tuned", 5, LO, HI, sampler="ipndm")[:-1].tolist(), rel=1e-6)
    assert bench.parse_sampler("ipndm@tuned") == ("ipndm", "tuned")


# A mixture none of the tuning problems is (a different seed and component count): the tuned grid must transfer.
HELD_OUT = GaussianMixture.random(2, 6, seed=77, component_std=0.25)


@pytest.mark.parametrize(("sampler", "nfe"), [("ipndm", 5), ("lambda-ddim", 5)])
def test_tuned_schedule_beats_karras_on_a_held_out_mixture(sampler, nfe):
    x_t = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * HI
    exact, _ = exact_endpoint(HELD_OUT, x_t, LO, HI)
    spec, denoise = get_sampler(sampler), MixtureDenoiser(HELD_OUT)

    def error(schedule):
        out = spec.fn(denoise, x_t.clone(), make_sigmas(schedule, nfe, LO, HI, sampler=sampler), **spec.hyper)
        return float((out - exact).norm(dim=1).mean())

    assert error("tuned") < 0.7 * error("karras")
