"""``bench samplers``: its exact-score denoiser, exact reference, target check and an end-to-end --quick run."""

import argparse
import json

import pytest
import torch

from fastdiffusion.bench import samplers as bench
from fastdiffusion.bench.cli import add_parser
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError


@pytest.mark.parametrize("problem", bench.PROBLEMS + bench.TUNING_PROBLEMS[:1], ids=lambda p: p.name)
def test_mixture_denoiser_matches_the_reference(problem):
    mixture = problem.make()
    fast = bench.MixtureDenoiser(mixture)
    gen = torch.Generator().manual_seed(0)
    for sigma in (80.0, 5.0, 1.0, 0.3, 0.05, 0.002):
        x = mixture.sample(200, generator=gen) + sigma * torch.randn(200, mixture.dim, generator=gen,
                                                                      dtype=torch.float64)
        ref = mixture.denoise(x, sigma)
        assert torch.allclose(fast(x, torch.tensor(sigma, dtype=torch.float64)), ref, rtol=1e-11, atol=1e-11)
    per_row = torch.linspace(0.01, 3.0, 200, dtype=torch.float64)
    assert torch.allclose(fast(x, per_row), mixture.denoise(x, per_row), rtol=1e-12, atol=1e-12)


def test_exact_endpoint_is_converged():
    mixture = GaussianMixture.ring2d()
    x_t = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * bench.SIGMA_MAX
    a, nfev = bench.exact_endpoint(mixture, x_t)
    b, _ = bench.exact_endpoint(mixture, x_t, rtol=1e-12)
    assert nfev > 100
    assert float((a - b).norm(dim=1).max()) < 1e-6


def test_target_check_and_sampler_parsing():
    rows = [{"problem": "ring2d", "nfe": nfe, "sampler": s, "schedule": sch, "error": e}
            for nfe in (5, 10) for s, sch, e in (("dpmpp-2m", "logsnr", 1.0), ("dpmpp-2m", "karras", 1.5),
                                                 ("dpmpp-2m", "tuned", 0.2), ("ipndm", "x", 0.4 if nfe == 5 else 0.6),
                                                 ("heun", "x", None))]
    out = bench.target_check(rows, [bench.PROBLEMS[0]])
    assert out["cases"]["ring2d@5"]["holds"] and not out["cases"]["ring2d@10"]["holds"]
    # the baseline is 2M's better of logsnr and karras; 2M on the tuned grid is reported, not a baseline or candidate
    assert out["cases"]["ring2d@5"]["best"] == "ipndm@x" and out["cases"]["ring2d@5"]["baseline"] == 1.0
    assert out["cases"]["ring2d@5"]["ratio_vs_tuned"] == pytest.approx(2.0)
    assert out["holds_by_dim"] == {"2": False}
    assert bench.parse_sampler("ipndm@logsnr") == ("ipndm", "logsnr")
    assert bench.parse_sampler("unipc") == ("unipc", "logsnr")
    with pytest.raises(UserError, match="unknown sampler"):
        bench.parse_sampler("nope")
    assert {"euler", "heun", "ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "ipndm", "lambda-ddim",
            "conjugate-ddim", "ipndm@tuned", "lambda-ddim@tuned", "dpmpp-2m@tuned"} <= set(bench.default_samplers())


def test_quick_run_end_to_end(tmp_path):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "samplers", "--quick", "--out", str(tmp_path),
                              "--samplers", "dpmpp-2m,lambda-ddim,heun,ipndm@logsnr"])
    args.func(args)
    result = json.loads((tmp_path / "results.json").read_text())
    for key in ("command", "versions", "git_commit", "device", "timestamp", "protocol", "problems", "results",
                "target", "seconds"):
        assert key in result, key
    assert result["versions"]["torch"] == torch.__version__
    assert set(result["problems"]) == {"ring2d", "benchmark64"}
    assert len(result["results"]) == 2 * 4 * len(bench.QUICK_NFES)
    heun = {r["nfe"]: r["error"] for r in result["results"] if r["sampler"] == "heun" and r["problem"] == "ring2d"}
    assert heun[10] is None and heun[5] is not None  # heun cannot make an even NFE: recorded as n/a
    ok = [r for r in result["results"] if r["error"] is not None]
    assert all(r["error"] >= 0 and r["sw2"] >= 0 for r in ok)
    assert set(result["target"]["cases"]) == {"ring2d@5", "ring2d@10", "benchmark64@5", "benchmark64@10"}
    md = (tmp_path / "results.md").read_text()
    assert "| heun@karras |" in md and "n/a" in md and "## Target" in md
    assert (tmp_path / "error_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["seconds"] < 30
