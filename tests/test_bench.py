"""The sampler-benchmark harness: exact references, counted runs, NFE rules, target checks, tuning search, and a tiny
run of each entry (``bench samplers``, ``bench psld-samplers``) through the command line."""

import json

import pytest
import torch

from fastdiffusion.bench import harness, psld_samplers, tuning
from fastdiffusion.bench import samplers as edm_bench
from fastdiffusion.bench.edm_exact import SIGMA_MAX, MixtureDenoiser, exact_endpoint
from fastdiffusion.bench.problems import EDM_FAMILY, EDM_PROBLEMS, PSLD_FAMILY, Problem
from fastdiffusion.cli import main as cli_main
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.samplers import SAMPLERS
from fastdiffusion.samplers.registry import SamplerSpec, one_call_per_step

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("problem", EDM_PROBLEMS, ids=lambda p: p.name)
def test_mixture_denoiser_matches_the_reference(problem):
    mixture = problem.make()
    fast = MixtureDenoiser(mixture)
    gen = torch.Generator().manual_seed(0)
    for sigma in (80.0, 5.0, 1.0, 0.3, 0.05, 0.002):
        x = mixture.sample(200, generator=gen) + sigma * torch.randn(200, mixture.dim, generator=gen,
                                                                      dtype=torch.float64)
        ref = mixture.denoise(x, sigma)
        assert torch.allclose(fast(x, torch.tensor(sigma, dtype=torch.float64)), ref, rtol=1e-11, atol=1e-11)
        assert torch.equal(fast(x, torch.full((200,), sigma, dtype=torch.float64)), fast(x, sigma))  # one shared sigma
    per_row = torch.linspace(0.01, 3.0, 200, dtype=torch.float64)
    assert torch.allclose(fast(x, per_row), mixture.denoise(x, per_row), rtol=1e-12, atol=1e-12)


def test_exact_endpoint_is_converged():
    mixture = GaussianMixture.ring2d()
    x_t = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX
    a, nfev = exact_endpoint(mixture, x_t)
    b, _ = exact_endpoint(mixture, x_t, rtol=1e-12)
    assert nfev > 100
    assert float((a - b).norm(dim=1).max()) < 1e-6


def test_prepare_draws_the_start_of_each_family():
    ring = Problem("ring2d", GaussianMixture.ring2d, 2, 5)
    edm = harness.prepare(EDM_FAMILY, ring, 8, 3)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(edm.start, noise * SIGMA_MAX) and edm.exact.shape == (3, 2) and edm.data.shape == (8, 2)
    psld = harness.prepare(PSLD_FAMILY, ring, 8, 3)
    assert psld.start.shape == (8, 4) and torch.equal(psld.start[:, :2], noise)  # z = (x, m): x first, then m
    assert psld.exact.shape == (3, 2) and psld.exact_nfev > 0


def test_runs_are_counted(monkeypatch):
    prep = harness.prepare(EDM_FAMILY, Problem("ring2d", GaussianMixture.ring2d, 2, 5), 4, 4)

    def one_extra_call(model, x, sigmas, *, noise=None, callback=None):
        model(x, sigmas[0])
        for s in sigmas[:-1]:
            x = model(x, s)
        return x

    monkeypatch.setitem(SAMPLERS, "liar", SamplerSpec("liar", one_extra_call, one_call_per_step, "test"))
    sigmas = harness.grid(EDM_FAMILY, "liar", "karras", 5)
    with pytest.raises(RuntimeError, match="made 6 network calls"):
        harness.run(EDM_FAMILY, prep, "liar", sigmas, 5, 4, 0)


def test_nfe_rules_and_sampler_selection():
    assert harness.runnable_nfe("heun", 10, round_down=False) is None  # heun makes odd NFE only: n/a
    assert harness.runnable_nfe("heun", 10, round_down=True) == 9
    assert harness.runnable_nfe("nse", 4, round_down=True) == 3  # 2 calls per step: 2 n + 1
    assert harness.parse_sampler("ipndm@logsnr") == ("ipndm", "logsnr")
    assert harness.parse_sampler("unipc") == ("unipc", "logsnr")
    with pytest.raises(UserError, match="unknown sampler"):
        harness.parse_sampler("nope")
    with pytest.raises(UserError, match="is a psld sampler"):
        harness.select_samplers(EDM_FAMILY, ["ddim", "em"])
    assert {"euler", "heun", "ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "ipndm", "lambda-ddim",
            "conjugate-ddim", "dpmpp-2m@karras", "ipndm@logsnr"} <= set(edm_bench.default_samplers())
    assert {"em", "sscs", "psld-conj", "csps-s"} <= set(psld_samplers.default_samplers())


def test_edm_target_check():
    rows = [{"problem": "ring2d", "nfe": nfe, "sampler": s, "schedule": sch, "error": e}
            for nfe in (5, 10) for s, sch, e in (("dpmpp-2m", "logsnr", 1.0), ("dpmpp-2m", "karras", 1.5),
                                                 ("ipndm", "x", 0.4 if nfe == 5 else 0.6),
                                                 ("heun", "x", None))]
    out = edm_bench.target_check(rows, [EDM_PROBLEMS[0]])
    assert out["cases"]["ring2d@5"]["holds"] and not out["cases"]["ring2d@10"]["holds"]
    # the baseline is 2M's better of logsnr and karras
    assert out["cases"]["ring2d@5"]["best"] == "ipndm@x" and out["cases"]["ring2d@5"]["baseline"] == 1.0
    assert out["holds_by_dim"] == {"2": False}


def test_psld_target_check():
    def row(sampler, nfe, value):
        return {"problem": "p", "sampler": sampler, "schedule": "quadratic", "nfe": nfe, "mmd": value}

    rows = [row("csps-s", 20, 0.1), row("sps-s", 20, 0.2), row("em", 20, 0.5), row("em", 100, 0.3),
            row("sscs", 50, 0.09), row("em", 200, 0.05)]
    assert psld_samplers.target_check(rows)["p"] == {"best": "csps-s@quadratic", "mmd": 0.1,
                                                     "baseline_reaches_at": (50, "sscs@quadratic"), "holds": False}
    assert psld_samplers.target_check(rows[:4])["p"]["holds"]  # never reached


def test_grid_search_refines_around_the_coarse_best():
    calls = []

    def value(v):
        calls.append(v)
        return (v - 0.0123) ** 2

    best, values = tuning.grid_search(value, [-0.02, 0.01, 0.04], refine_step=0.001)
    assert best == 0.012 and values[0.012] == pytest.approx(0.0003**2)
    assert len(calls) == len(values) == 3 + 8  # the coarse best is not evaluated twice


def test_bench_help_lists_both_sampler_entries(capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "samplers" in out and "psld-samplers" in out and "throughput" in out


def test_edm_entry_end_to_end(tmp_path):
    assert cli_main(["bench", "samplers", "--quick", "--out", str(tmp_path),
                     "--samplers", "dpmpp-2m,lambda-ddim,heun,ipndm@logsnr"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    for key in ("command", "versions", "git_commit", "device", "timestamp", "protocol", "problems", "results",
                "target", "seconds"):
        assert key in result, key
    assert result["versions"]["torch"] == torch.__version__
    assert set(result["problems"]) == {"ring2d", "benchmark64"}
    assert len(result["results"]) == 2 * 4 * len(edm_bench.QUICK_NFES)
    heun = {r["nfe"]: r for r in result["results"] if r["sampler"] == "heun" and r["problem"] == "ring2d"}
    assert heun[10]["error"] is None and heun[10]["nfe_run"] is None  # heun cannot make an even NFE: n/a
    assert heun[5]["error"] is not None and heun[5]["nfe_run"] == 5
    ok = [r for r in result["results"] if r["error"] is not None]
    assert all(r["error"] >= 0 and r["sw2"] >= 0 and r["nfe_run"] == r["nfe"] for r in ok)
    assert set(result["target"]["cases"]) == {"ring2d@5", "ring2d@10", "benchmark64@5", "benchmark64@10"}
    md = (tmp_path / "results.md").read_text()
    assert "| heun@karras |" in md and "n/a" in md and "## Target" in md
    assert (tmp_path / "error_vs_nfe.png").read_bytes()[:8] == PNG


def test_psld_entry_end_to_end(tmp_path):
    assert cli_main(["bench", "psld-samplers", "--n", "32", "--n-exact", "4", "--nfe", "4,20",
                     "--samplers", "em,nse,psld-conj", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["problems"]) == {"ring2d", "benchmark64"}
    assert result["problems"]["ring2d"]["n_exact"] == 4 and result["protocol"]["nfe"] == [4, 20]
    rows = {(r["problem"], r["sampler"], r["nfe"]): r for r in result["results"]}
    assert len(rows) == 2 * 3 * 2
    assert rows["ring2d", "nse", 4]["nfe_run"] == 3 and rows["ring2d", "nse", 20]["nfe_run"] == 19  # 2 n + 1
    assert rows["ring2d", "em", 20]["error"] is None and rows["ring2d", "em", 20]["mmd"] >= 0  # stochastic: no error
    assert rows["benchmark64", "psld-conj", 4]["error"] > 0
    assert result["target"]["ring2d"]["best"] in ("psld-conj@quadratic", "nse@quadratic")
    md = (tmp_path / "results.md").read_text()
    assert "| nse@quadratic |" in md and "(19)" in md and "## Target" in md and "## Tuned hyperparameters" in md
    assert (tmp_path / "error_vs_nfe.png").read_bytes()[:8] == PNG


def test_trained_model_table_end_to_end_with_sampler_options(tmp_path, capsys):
    import fastdiffusion as fd
    from fastdiffusion.metrics.digits_classifier import fd_digits
    from fastdiffusion.metrics.sharpness import hf_energy

    run = tmp_path / "run"
    assert cli_main(["train", "--data", "digits16", "--net", "ddpmpp-tiny", "--batch", "16", "--steps", "4",
                     "--ckpt-every", "4", "--grid-images", "4", "--grid-nfe", "3", "--run-dir", str(run),
                     "--quiet"]) == 0
    args = ["bench", "samplers", str(run), "--schedules", "karras", "--nfe", "3,4", "--seeds", "0-7",
            "--tuning-seeds", "100-103", "--batch", "8", "--threads", "2", "--out", str(tmp_path / "table")]
    assert cli_main([*args, "--samplers", "euler,ipndm:order=2"]) == 0
    result = json.loads((tmp_path / "table" / "model_samplers.json").read_text())
    rows = {(r["sampler"], r["nfe"]): r for r in result["results"]}
    assert set(rows) == {("euler", 3), ("euler", 4), ("ipndm:order=2", 3), ("ipndm:order=2", 4)}
    assert rows[("ipndm:order=2", 4)]["sampler_options"] == {"order": 2}
    assert result["protocol"]["fd"] == "FD-digits vs the digits test split at 16 px"
    model = fd.load_model(run)
    with torch.no_grad():
        x = fd.generate(model, list(range(8)), batch=8, sampler="ipndm", nfe=4, schedule="karras", order=2,
                        progress=False)
        ref = fd.generate(model, list(range(8)), batch=8, sampler="heun", nfe=35, progress=False)
    row = rows[("ipndm:order=2", 4)]
    assert row["fd_digits"] == pytest.approx(fd_digits(x, "test"), rel=1e-6)
    assert row["rms_to_reference"] == pytest.approx(float((x - ref).square().mean().sqrt()), rel=1e-5)
    assert row["hf_ratio"] == pytest.approx(hf_energy(x) / hf_energy(ref), rel=1e-5)
    capsys.readouterr()
    assert cli_main([*args, "--samplers", "ipndm:lam=2"]) == 2
    assert "sampler 'ipndm' has no option lam" in capsys.readouterr().err
    # a grid fitted with sampler options is fitted for the sampler as the options make it
    from fastdiffusion.samplers.tuning import fit_schedule
    from fastdiffusion.seeds import SeededNoise

    assert cli_main(["bench", "samplers", str(run), "--samplers", "ipndm:order=2", "--schedules", "model", "--nfe",
                     "4", "--seeds", "0-7", "--tuning-seeds", "100-103", "--max-evals", "5", "--batch", "8",
                     "--threads", "2", "--hf-tolerance", "0.02", "--out", str(tmp_path / "fit")]) == 0
    fitted = json.loads((tmp_path / "fit" / "model_samplers.json").read_text())
    row, = fitted["results"]
    with torch.no_grad():
        want = fit_schedule(model, sampler="ipndm", nfe=4, noise=SeededNoise([100, 101, 102, 103]).randn(
            model.data_shape, "cpu"), max_evals=5, order=2, hf_tolerance=0.02)
    assert row["sigmas"] == want.sigmas.tolist() and row["sampler_options"] == {"order": 2}
    assert fitted["protocol"]["fit_objective"].endswith("outside), steeply penalised above 1.1 x the RMS fit's RMS")
    # 'learned' rows for the samplers with per-step parameters only: the same fit as fd.learn_schedule's
    assert cli_main(["bench", "samplers", str(run), "--samplers", "ipndm,dpmpp-2m", "--schedules", "learned", "--nfe",
                     "4", "--seeds", "0-7", "--tuning-seeds", "100-103", "--learn-iterations", "3", "--batch", "8",
                     "--threads", "2", "--out", str(tmp_path / "learned")]) == 0
    learned = json.loads((tmp_path / "learned" / "model_samplers.json").read_text())
    row, = learned["results"]
    with torch.no_grad():
        want = fd.learn_schedule(model, sampler="dpmpp-2m", nfe=4, iterations=3,
                                 noise=SeededNoise([100, 101, 102, 103]).randn(model.data_shape, "cpu"))
    assert (row["sampler"], row["sigmas"], row["hyper"]) == ("dpmpp-2m", want.sigmas.tolist(), want.hyper)
    assert learned["protocol"]["learned_objective"].endswith("learned by Adam, 3 steps (samplers.learned)")


def test_trained_model_table_of_a_psld_model_fits_its_time_grids(tmp_path, capsys):
    """A PSLD model's table: its own samplers, time grids and reference (CSPS-D 100), fitted time grids as `tune`
    fits them, and with the analytic first step the grid fitted for one more call."""
    import fastdiffusion as fd
    from fastdiffusion.data.stats import resolve_data_stats
    from fastdiffusion.metrics.sharpness import hf_energy
    from fastdiffusion.samplers.tuning import fit_schedule
    from fastdiffusion.seeds import SeededNoise

    run = tmp_path / "run"
    assert cli_main(["train", "--data", "digits16", "--process", "psld", "--net", "ddpmpp-tiny", "--batch", "16",
                     "--steps", "4", "--ckpt-every", "4", "--grid-images", "4", "--grid-nfe", "3", "--run-dir",
                     str(run), "--quiet"]) == 0
    args = ["bench", "samplers", str(run), "--samplers", "psld-conj", "--nfe", "4", "--seeds", "0-7",
            "--tuning-seeds", "100-103", "--max-evals", "5", "--batch", "8", "--threads", "2"]
    assert cli_main([*args, "--schedules", "quadratic,model", "--out", str(tmp_path / "table")]) == 0
    result = json.loads((tmp_path / "table" / "model_samplers.json").read_text())
    assert (result["reference"]["sampler"], result["reference"]["nfe"]) == ("csps-d", 100)
    rows = {r["schedule"]: r for r in result["results"]}
    assert set(rows) == {"quadratic", "model"}
    model = fd.load_model(run)
    with torch.no_grad():
        x = fd.generate(model, list(range(8)), batch=8, sampler="psld-conj", nfe=4, schedule="quadratic",
                        progress=False)
        ref = fd.generate(model, list(range(8)), batch=8, sampler="csps-d", nfe=100, progress=False)
        want = fit_schedule(model, sampler="psld-conj", nfe=4, noise=SeededNoise([100, 101, 102, 103]).randn(
            model.data_shape, "cpu"), max_evals=5)
    assert rows["quadratic"]["rms_to_reference"] == pytest.approx(float((x - ref).square().mean().sqrt()), rel=1e-5)
    assert rows["quadratic"]["hf_ratio"] == pytest.approx(hf_energy(x) / hf_energy(ref), rel=1e-5)
    assert rows["model"]["sigmas"] == want.sigmas.tolist()
    assert "Reference: csps-d 100 NFE" in (tmp_path / "table" / "model_samplers.md").read_text()
    capsys.readouterr()
    assert cli_main([*args, "--schedules", "model+afs", "--out", str(tmp_path / "afs")]) == 0
    afs_row, = json.loads((tmp_path / "afs" / "model_samplers.json").read_text())["results"]
    assert afs_row["tuning_nfe"] == 5 and len(afs_row["sigmas"]) == 6 and afs_row["sigmas"][0] == 1.0
    # --teleport: every run, the reference's too, starts from the Gaussian flow's state at t = 0.5
    assert cli_main([*args, "--schedules", "quadratic", "--teleport", "0.5", "--out", str(tmp_path / "tel")]) == 0
    teleported = json.loads((tmp_path / "tel" / "model_samplers.json").read_text())
    row, = teleported["results"]
    assert row["sigmas"][0] == pytest.approx(0.5) and teleported["protocol"]["teleport"] == 0.5
    shortcut = {"teleport": 0.5, "data_stats": resolve_data_stats(run, None, model.data_shape)}
    with torch.no_grad():
        x = fd.generate(model, list(range(8)), batch=8, sampler="psld-conj", nfe=4, schedule="quadratic",
                        progress=False, **shortcut)
        ref = fd.generate(model, list(range(8)), batch=8, sampler="csps-d", nfe=100, progress=False, **shortcut)
    assert row["rms_to_reference"] == pytest.approx(float((x - ref).square().mean().sqrt()), rel=1e-5)


def test_trained_model_table_runs_the_fit_for_one_more_call_with_an_analytic_first_step(tmp_path, capsys):
    import fastdiffusion as fd
    from fastdiffusion.data.stats import resolve_data_stats
    from fastdiffusion.metrics.digits_classifier import fd_digits

    run = tmp_path / "run"
    assert cli_main(["train", "--data", "digits16", "--net", "ddpmpp-tiny", "--batch", "16", "--steps", "4",
                     "--ckpt-every", "4", "--grid-images", "4", "--grid-nfe", "3", "--run-dir", str(run),
                     "--quiet"]) == 0
    assert cli_main(["bench", "samplers", str(run), "--samplers", "ipndm", "--schedules", "model,model+afs",
                     "--nfe", "3,4", "--seeds", "0-7", "--tuning-seeds", "100-103", "--max-evals", "6", "--batch",
                     "8", "--threads", "2", "--out", str(tmp_path / "table")]) == 0
    result = json.loads((tmp_path / "table" / "model_samplers.json").read_text())
    rows = {(r["schedule"], r["nfe"]): r for r in result["results"]}
    assert set(rows) == {("model", 3), ("model", 4), ("model+afs", 3), ("model+afs", 4)}
    # one fit per sampler and number of calls: model+afs at NFE 3 runs the NFE-4 grid, its first call analytic
    afs, fitted = rows[("model+afs", 3)], rows[("model", 4)]
    assert afs["sigmas"] == fitted["sigmas"] and afs["tuning_nfe"] == 4 and len(afs["sigmas"]) == 5
    assert afs["tuning_seconds"] == fitted["tuning_seconds"]
    assert result["protocol"]["data_stats"]["source"] == "digits16@all"  # the run trained on all of digits16
    model = fd.load_model(run)
    with torch.no_grad():
        x = fd.generate(model, list(range(8)), batch=8, sampler="ipndm", nfe=3,
                        sigmas=torch.tensor(afs["sigmas"], dtype=torch.float64), afs=True,
                        data_stats=resolve_data_stats(run, None, model.data_shape), progress=False)
    assert afs["fd_digits"] == pytest.approx(fd_digits(x, "test"), rel=1e-6)
    assert cli_main(["bench", "samplers", str(run), "--schedules", "karras", "--data-stats", "digits",
                     "--out", str(tmp_path / "t2")]) == 2
    assert "--data-stats is used only by the 'model+afs' schedule" in capsys.readouterr().err


def test_fitted_vs_fixed_picks_the_best_rows_and_counts_only_sharp_fits():
    from fastdiffusion.bench.model_samplers import fitted_vs_fixed, markdown

    def row(sampler, schedule, nfe, fd, hf):
        return {"sampler": sampler, "schedule": schedule, "nfe": nfe, "fd_digits": fd, "hf_ratio": hf,
                "last_sigma": 0.002}

    result = {"reference": {"sampler": "heun", "nfe": 35, "fd_digits": 80.0},
              "results": [row("a", "karras", 4, 200.0, 1.5), row("a", "logsnr", 4, 160.0, 1.2),
                          row("a", "model", 4, 60.0, 1.3), row("b", "model+afs", 4, 100.0, 0.95),
                          row("a", "karras", 5, 120.0, 1.0), row("a", "model", 5, 90.0, 1.2),
                          row("a", "karras", 6, 100.0, 1.0)]}
    nfe4, nfe5 = fitted_vs_fixed(result)  # NFE 6 has no fitted row
    assert nfe4["best_fixed"]["fd_digits"] == 160.0 and nfe4["best_fitted"]["fd_digits"] == 60.0
    assert nfe4["ratio"] == pytest.approx(60 / 160) and nfe4["ratio_to_reference"] == pytest.approx(60 / 80)
    assert nfe4["best_sharp_fitted"]["schedule"] == "model+afs" and nfe4["sharp_ratio"] == pytest.approx(100 / 160)
    assert nfe5["best_sharp_fitted"] is None and nfe5["sharp_ratio"] is None
    md = markdown(result)
    assert "| 4 | 160 (a @ logsnr) | 60 (a @ model) | 0.38 | 0.75 | 1.30 | 100 (b @ model+afs) | 0.62 |" in md
    assert "| 5 | 120 (a @ karras) | 90 (a @ model) | 0.75 | 1.12 | 1.20 | – | – |" in md
    # without FD the metric is the RMS to the reference, whose own RMS is 0: no ratio to it
    for r in result["results"]:
        r["rms_to_reference"] = r.pop("fd_digits") / 1000
    result["reference"] = {"sampler": "heun", "nfe": 35, "rms_to_reference": 0.0}
    assert fitted_vs_fixed(result)[0]["ratio_to_reference"] is None
    assert "| 4 | 0.16 (a @ logsnr) | 0.06 (a @ model) | 0.38 | – | 1.30 |" in markdown(result)
