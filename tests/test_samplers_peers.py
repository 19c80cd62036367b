"""The peer drivers of ``benchmarks/samplers_peers/run.py``: k-diffusion and diffusers samplers driven with an exact
mixture denoiser equal this library's equivalent samplers on the same grid, and make exactly the NFE they are run at."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from fastdiffusion.samplers import make_sigmas

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "samplers_peers" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("samplers_peers_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def problem(run):
    mixture = run.make_mixture(11, 4, "lowrank")
    x = run.SIGMA_MAX * torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return run.MixtureDenoiser(mixture), x


def test_k_diffusion_dpmpp_2m_peer_is_our_dpmpp_2m(run, problem):
    model, x = problem
    peer = next(p for p in run.k_diffusion_peers() if p.name == "dpmpp_2m")
    for grid, ours in (("karras", "karras"), ("exponential", "logsnr")):
        theirs = run.run_peer(peer, model, x, 6, grid)
        mine = run.run_ours(model, x, "dpmpp-2m", run.kd_sigmas(run.load_k_diffusion_sampling(), grid, 6), 6)
        assert float((theirs - mine).abs().max()) < 1e-10
        # our own grid is k-diffusion's up to float32 rounding of ln sigma at the ends (schedules.log_snr)
        assert torch.allclose(run.kd_sigmas(run.load_k_diffusion_sampling(), grid, 6),
                              make_sigmas(ours, 6, run.SIGMA_MIN, run.SIGMA_MAX), rtol=1e-6)


def test_peer_nfe_is_counted_and_unreachable_nfe_is_none(run, problem):
    model, x = problem
    heun = next(p for p in run.k_diffusion_peers() if p.name == "heun")
    assert run.run_peer(heun, model, x, 4, "karras") is None  # 2 steps - 1 calls: even NFE is n/a
    counter = run.Counter(model)
    heun.run(counter, x.clone(), heun.steps(5), "karras")
    assert counter.calls == 5
    fast = next(p for p in run.k_diffusion_peers() if p.name.startswith("dpm_fast"))
    for nfe in (3, 4, 5):
        assert run.run_peer(fast, model, x, nfe, "own") is not None  # raises unless exactly nfe calls


def test_diffusers_edm_dpmsolver_driver_is_our_dpmpp_2m(run, problem):
    diffusers = pytest.importorskip("diffusers")
    model, x = problem
    sigmas = make_sigmas("karras", 5, run.SIGMA_MIN, run.SIGMA_MAX)
    driver = run._edm_scheduler_run(diffusers.EDMDPMSolverMultistepScheduler, solver_order=2)
    counter = run.Counter(model)
    theirs = driver(counter, x.clone(), 5, "karras", sigmas64=sigmas)
    assert counter.calls == 5
    assert float((theirs - run.run_ours(model, x, "dpmpp-2m", sigmas, 5)).abs().max()) < 1e-10
