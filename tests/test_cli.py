"""The CLI end to end on tiny data, and one-line errors with exit code 2 for bad input."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fastdiffusion.cli import build_parser, main
from fastdiffusion.seeds import format_seeds, parse_seeds
from fastdiffusion.training.config import PRESETS

TINY = ["--data", "digits", "--net", "ddpmpp-tiny", "--batch", "16", "--steps", "4", "--ckpt-every", "4",
        "--grid-images", "4", "--grid-nfe", "3", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    return run


def test_help_on_every_subcommand(capsys):
    proc = subprocess.run([sys.executable, "-m", "fastdiffusion.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "usage: fastdiffusion" in proc.stdout
    for cmd in [["train"], ["sample"], ["info"], ["eval"], ["bench"], ["bench", "samplers"], ["bench", "throughput"],
                ["distill"], ["distill", "trajectories"], ["distill", "train"]]:
        with pytest.raises(SystemExit) as exit_info:
            main([*cmd, "--help"])
        assert exit_info.value.code == 0 and f"usage: fastdiffusion {' '.join(cmd)}" in capsys.readouterr().out
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "sample", "info", "eval", "bench"} <= set(subcommands)


def test_train_writes_run_directory(run_dir):
    for name in ("config.json", "log.jsonl", "samples.png", "loss.png", "ckpt-00000004/ema.safetensors"):
        assert (run_dir / name).is_file(), name
    assert Image.open(run_dir / "samples.png").size[0] >= 64


def test_sample_outputs_and_batch_independence(run_dir, tmp_path):
    npz_a, npz_b = tmp_path / "a.npz", tmp_path / "b.npz"
    args = ["sample", str(run_dir), "--sampler", "heun", "--nfe", "5", "--seeds", "0-5", "--quiet",
            "--opt", "churn=5"]
    assert main([*args, "--batch", "2", "--out", str(npz_a)]) == 0
    assert main([*args, "--batch", "6", "--out", str(npz_b)]) == 0
    a, b = np.load(npz_a), np.load(npz_b)
    assert a["samples"].shape == (6, 8, 8, 1) and a["samples"].dtype == np.uint8
    assert np.array_equal(a["samples"], b["samples"]) and list(a["seeds"]) == list(range(6))
    assert main(["sample", str(run_dir), "--nfe", "3", "--seeds", "3,7", "--out", str(tmp_path / "imgs"),
                 "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["000003.png", "000007.png"]
    assert main(["sample", str(run_dir / "ckpt-00000004" / "model.safetensors"), "--sampler", "euler", "--nfe", "4",
                 "--seeds", "0-3", "--out", str(tmp_path / "grid.png"), "--quiet"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--data", "/nonexistent/images", "--run-dir", "{tmp}/x", "--quiet"], "/nonexistent/images"),
    (["train", "--net", "resnet-9000", "--run-dir", "{tmp}/x", "--quiet"], "resnet-9000"),
    (["train", "--process", "ddpm", "--run-dir", "{tmp}/x", "--quiet"], "unknown process 'ddpm'"),
    (["train", "--batch", "10", "--accum", "3", "--run-dir", "{tmp}/x", "--quiet"], "--accum"),
    (["train", "--preset", "nope", "--run-dir", "{tmp}/x"], "unknown preset 'nope'"),
    (["train", "--net-opt", "dropout", "--run-dir", "{tmp}/x"], "KEY=VALUE"),
    (["sample", "{tmp}/missing"], "no such model"),
    (["sample", "{run}", "--nfe", "10"], "odd --nfe"),
    (["sample", "{run}", "--seeds", "a-b"], "--seeds"),
    (["sample", "{run}", "--out", "{tmp}/x.jpg", "--nfe", "3", "--seeds", "0"], ".png grid"),
    (["sample", "{run}", "--opt", "lam=1", "--nfe", "3"], "no option lam"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "fastdiffusion.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    proc = subprocess.run([sys.executable, "-m", "fastdiffusion.cli", "sample", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and str(bad) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_preset_is_one_line_naming_the_presets(tmp_path, capsys):
    assert main(["train", "--preset", "nope", "--run-dir", str(tmp_path / "x"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown preset 'nope'" in lines[0] and all(name in lines[0] for name in PRESETS)
    assert not (tmp_path / "x").exists()


def test_preset_and_config_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "demo", "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


@given(st.lists(st.integers(0, 40), min_size=1, max_size=30))
def test_format_seeds_inverts_parse_seeds(seeds):
    assert parse_seeds(format_seeds(seeds)) == seeds


def test_format_seeds_writes_runs_as_ranges():
    assert format_seeds([0, 1, 2, 5, 7, 8, 3]) == "0-2,5,7-8,3"


def test_module_eval_cli_reports_errors_without_the_top_level_cli(tmp_path):
    """The sub-CLIs share cli_args.dispatch; running one never imports fastdiffusion.cli (no import circle)."""
    script = ("import sys; from fastdiffusion.metrics.cli import main; "
              f"code = main([{str(tmp_path / 'missing.npz')!r}]); sys.exit(99 if 'fastdiffusion.cli' in sys.modules "
              "else code)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------------------------- class labels and guidance


@pytest.fixture(scope="module")
def conditional_model(tmp_path_factory):
    """A tiny 10-class EDM model file (weights moved off their zero init, so labels change the samples)."""
    from test_guidance import tiny_model

    from fastdiffusion.models import save_model

    path = tmp_path_factory.mktemp("cond") / "cond.safetensors"
    save_model(tiny_model(), path)
    return path


def test_sample_loads_no_optimiser_flop_counter_or_compiler_it_does_not_use(conditional_model, tmp_path):
    """An eager `sample` must not pay the import of scipy.optimize (tuning), the FLOP counter (`info`) or Inductor."""
    code = (f"import sys; from fastdiffusion.cli import main; "
            f"main(['sample', {str(conditional_model)!r}, '--seeds', '0-1', '--nfe', '1', '--sampler', 'euler', "
            f"'--no-compile', '--quiet', '--out', {str(tmp_path / 's.png')!r}]); "
            f"print(sorted(m for m in sys.modules if m.startswith(('scipy.optimize', 'torch.utils.flop_counter', "
            f"'torch._inductor'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "[]" and (tmp_path / "s.png").is_file()


def test_sample_with_class_and_guidance_end_to_end(conditional_model, tmp_path, capsys):
    import torch

    import fastdiffusion as fd
    from fastdiffusion.plots import to_uint8

    out = tmp_path / "x.npz"
    args = ["sample", str(conditional_model), "--seeds", "0-3", "--nfe", "5", "--sampler", "euler", "--quiet"]
    assert main([*args, "--class", "3", "--guidance", "2", "--out", str(out)]) == 0
    assert "euler, 5 NFE; class 3, guidance 2: 10 network evaluations per sample (2x NFE)" in capsys.readouterr().out
    with torch.no_grad():
        expect = fd.generate(fd.load_model(conditional_model), list(range(4)), sampler="euler", nfe=5, class_labels=3,
                             guidance=2.0, progress=False)
    assert np.array_equal(np.load(out)["samples"], to_uint8(expect))
    assert main([*args, "--class", "5", "--guidance", "2", "--out", str(tmp_path / "five.npz")]) == 0
    assert not np.array_equal(np.load(tmp_path / "five.npz")["samples"], np.load(out)["samples"])
    for batch in ("1", "4"):  # random classes come from the seeds: any batch gives the same images
        assert main([*args, "--class", "random", "--guidance", "3", "--batch", batch,
                     "--out", str(tmp_path / f"r{batch}.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "r1.npz")["samples"], np.load(tmp_path / "r4.npz")["samples"])


def test_sample_eval_and_trajectories_take_a_guidance_interval(conditional_model, tmp_path, capsys):
    import json

    import torch

    import fastdiffusion as fd
    from fastdiffusion.plots import to_uint8

    # euler at 5 NFE calls at sigma 80, 17.5, 2.52, 0.170, 0.002 (Karras, rho 7): (0.1, 10] guides 2 of them
    guided = ["--class", "3", "--guidance", "2", "--guidance-interval", "0.1,10", "--sampler", "euler", "--nfe", "5"]
    out = tmp_path / "x.npz"
    assert main(["sample", str(conditional_model), "--seeds", "0-3", *guided, "--out", str(out), "--quiet"]) == 0
    assert ("class 3, guidance 2 on sigma in (0.1, 10]: 7 network evaluations per sample"
            in capsys.readouterr().out)
    with torch.no_grad():
        expect = fd.generate(fd.load_model(conditional_model), list(range(4)), sampler="euler", nfe=5, class_labels=3,
                             guidance=2.0, guidance_interval=(0.1, 10.0), progress=False)
        plain = fd.generate(fd.load_model(conditional_model), list(range(4)), sampler="euler", nfe=5, class_labels=3,
                            guidance=2.0, progress=False)
    assert np.array_equal(np.load(out)["samples"], to_uint8(expect)) and not torch.equal(expect, plain)
    report = tmp_path / "eval.json"
    assert main(["eval", str(conditional_model), *guided, "--n", "8", "--metrics", "fd-digits", "--out", str(report),
                 "--quiet"]) == 0
    protocol = json.loads(report.read_text())["results"]["fd-digits"]["protocol"]
    assert (protocol["guidance_interval"], protocol["network_evaluations"]) == ([0.1, 10.0], 7)
    traj = tmp_path / "traj"
    assert main(["distill", "trajectories", str(conditional_model), *guided, "--times", "2", "--seeds", "0-2",
                 "--out", str(traj), "--quiet"]) == 0
    assert json.loads((traj / "manifest.json").read_text())["guidance"] == {
        "class": 3, "guidance": 2.0, "guidance_interval": [0.1, 10.0], "network_evaluations": 7}


def test_distill_trajectories_with_class_and_guidance(conditional_model, tmp_path):
    import json

    out = tmp_path / "traj"
    assert main(["distill", "trajectories", str(conditional_model), "--class", "2", "--guidance", "1.5", "--sampler",
                 "euler", "--nfe", "8", "--times", "2", "--seeds", "0-2", "--out", str(out), "--quiet"]) == 0
    guidance = json.loads((out / "manifest.json").read_text())["guidance"]
    assert guidance == {"class": 2, "guidance": 1.5, "network_evaluations": 16}


@pytest.mark.parametrize(("argv", "needle"), [
    (["sample", "{cond}", "--class", "10"], "--class 10: this model has 10 classes"),
    (["sample", "{cond}", "--class", "two"], "--class two"),
    (["sample", "{cond}", "--guidance", "2"], "--guidance needs --class"),
    (["sample", "{cond}", "--class", "1", "--guidance", "-2"], "--guidance must be"),
    (["sample", "{cond}", "--class", "1", "--guidance", "2", "--guidance-interval", "5,1"], "0 <= LO < HI"),
    (["sample", "{cond}", "--guidance-interval", "1,5"], "--guidance-interval needs --class"),
    (["eval", "{cond}", "--class", "1", "--guidance-interval", "1", "--n", "4"], "two noise levels LO,HI"),
    (["sample", "{run}", "--class", "1"], "unconditional"),
    (["sample", "{run}", "--sampler", "heun", "--nfe", "3", "--opt", "churn=abc"], "--opt churn=abc"),
    (["sample", "{run}", "--device", "banana"], "--device banana"),
    (["sample", "{run}", "--device", "cuda:99"], "--device cuda:99"),
    (["eval", "{run}", "--device", "banana"], "--device banana"),
    (["eval", "{run}", "--class", "1", "--n", "4", "--nfe", "1", "--sampler", "euler"], "unconditional"),
    (["distill", "trajectories", "{run}", "--out", "{tmp}/t", "--class", "1", "--guidance", "2", "--seeds", "0"],
     "unconditional"),
])
def test_guidance_device_and_option_errors_are_one_line(run_dir, conditional_model, tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir)).replace("{cond}", str(conditional_model))
            for a in argv]
    fast = ["--nfe", "1", "--sampler", "euler"] if argv[0] == "sample" and "--sampler" not in argv else []
    assert main([*argv, *fast, "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_device_cuda_without_a_gpu_is_one_line(run_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["sample", str(run_dir), "--device", "cuda", "--nfe", "1", "--sampler", "euler", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastdiffusion sample: error: --device cuda: this machine has no CUDA GPU; use --device cpu (or auto)"


def test_eval_samples_a_conditional_model_with_guidance_and_reports_it(conditional_model, tmp_path, capsys):
    import json

    out = tmp_path / "eval.json"
    assert main(["eval", str(conditional_model), "--class", "random", "--guidance", "2", "--n", "8", "--sampler",
                 "euler", "--nfe", "3", "--metrics", "fd-digits", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    protocol = report["results"]["fd-digits"]["protocol"]
    assert (protocol["class"], protocol["guidance"], protocol["nfe"], protocol["network_evaluations"]) == (
        "random", 2.0, 3, 6)
    assert report["command"].startswith(f"fastdiffusion eval {conditional_model} --class random --guidance 2 ")
    assert "class random, guidance 2: 6 network evaluations per sample (2x NFE)" in capsys.readouterr().out
