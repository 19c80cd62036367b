"""DSNO at small budgets: the collapse check of `distill train`, an FDM teacher's student sees its noise, and `eval`
samples a student with the dsno sampler by default."""

import json

import torch

from fastdiffusion.cli import main as cli_main
from fastdiffusion.distill import build_student, generate_trajectories
from fastdiffusion.distill.student import COLLAPSE_RATIO, collapse_warning, spread_ratio
from fastdiffusion.models import ProcessModel, load_model, save_model
from fastdiffusion.nets import build_net, net_config
from fastdiffusion.processes import make_process

SIGMAS = [0.0, 0.002, 0.14, 3.3]  # four output times, m = 0 the sample
MANIFEST = {"times": 4, "data_shape": [2], "sigmas": SIGMAS, "cond_sigmas": [0.002, *SIGMAS[1:]], "sigma_max": 80.0}


def _teacher(process="edm", scale=0.3, seed=0):
    """A 2-D MLP model with weights drawn at ``scale`` (0: every weight zero, D(x) = c_skip x)."""
    torch.manual_seed(seed)
    cfg = net_config("mlp", in_channels=2, width=32, num_blocks=1)
    net = build_net(**cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn_like(p))
    return ProcessModel(net, make_process(process), cfg, (2,)).eval()


def test_spread_ratio_and_the_warning():
    torch.manual_seed(0)
    ref = torch.randn(64, 1, 8, 8)
    constant = ref.mean(0, keepdim=True).expand(64, -1, -1, -1) + 1e-3 * torch.randn(64, 1, 8, 8)
    assert spread_ratio(constant, ref) < 0.01
    assert abs(spread_ratio(ref[torch.randperm(64)], ref) - 1) < 1e-6  # the teacher's own samples, reordered
    warning = collapse_warning(spread_ratio(constant, ref), 64, 300)
    assert warning is not None and "collapsed at step 300" in warning and "--steps" in warning
    assert collapse_warning(2 * COLLAPSE_RATIO, 64, 300) is None
    assert collapse_warning(float("nan"), 64, 300) is None  # a reference without spread says nothing


def test_fdm_student_sees_its_noise(tmp_path):
    """FDM's c_in at sigma_T = 80 is 4e-8: with it the student's network would see no noise and every sample would be
    c_skip x_T plus one constant (spread 0.003). The student takes the base process's preconditioning instead."""
    teacher = _teacher("fdm-edm")
    student = build_student(teacher, MANIFEST, modes=2)
    assert student.process.name == "edm" and build_student(_teacher("edm"), MANIFEST, modes=2).process.name == "edm"
    z = torch.randn(256, 2)
    with torch.no_grad():
        out = student(80.0 * z)[:, 0]
        skip = student.process.precond(torch.tensor([80.0], dtype=torch.float64)).c_skip.item() * 80.0 * z
    # The network's own part varies with the noise (0.03 here; 1e-7 with FDM's c_in, whose input is 3e-6 z).
    assert float((out - skip).std(0).mean()) > 1e-3
    save_model(student, tmp_path / "student.safetensors")  # the file says so: it loads as the same generator
    loaded = load_model(tmp_path / "student.safetensors")
    with torch.no_grad():
        assert loaded.process.name == "edm" and torch.equal(loaded(80.0 * z), student(80.0 * z))


def test_distill_train_warns_on_a_collapsed_student_and_eval_picks_dsno(tmp_path, capsys):
    """A zero network's student makes c_skip(80) x_T, 0.6% of its teacher's spread (D = c_skip x carries the noise
    to 0.5 z); at a learning rate too small to move it, every checkpoint and the end warn, and the log records it."""
    teacher_file, traj, run = tmp_path / "teacher.safetensors", tmp_path / "traj", tmp_path / "run"
    save_model(_teacher(scale=0.0), teacher_file)
    generate_trajectories(teacher_file, traj, range(96), sampler="euler", nfe=8, shard_size=96, progress=False)
    assert cli_main(["distill", "train", str(traj), "--run-dir", str(run), "--steps", "2", "--batch", "16",
                     "--lr", "1e-12", "--ckpt-every", "1", "--log-every", "1", "--grid-images", "4", "--device",
                     "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "collapsed" in line]
    assert len(lines) == 2 and all(line.startswith("warning: the student's samples have collapsed") for line in lines)
    assert "at step 1:" in lines[0] and "at step 2:" in lines[1]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    checks = [r for r in rows if "spread_ratio" in r]
    assert [r["step"] for r in checks] == [1, 2] and all(r["spread_ratio"] < 0.02 and "warning" in r for r in checks)

    # eval of the student (its file and its run directory) samples it with dsno, 1 call, without being told.
    for source in (run / "student.safetensors", run):
        report = tmp_path / "report.json"
        assert cli_main(["eval", str(source), "--metrics", "sliced", "--reference", "moons", "--n", "32", "--seeds",
                         "0-31", "--out", str(report), "--device", "cpu", "--quiet"]) == 0
        protocol = json.loads(report.read_text())["protocol"]
        assert (protocol["sampler"], protocol["nfe"]) == ("dsno", 1)


def test_no_warning_for_a_trained_student(tmp_path, capsys):
    """A student trained for 50 steps keeps most of its teacher's spread (0.7 at step 25, 0.9 at 50): no warning,
    the spread logged at each checkpoint."""
    teacher_file, traj, run = tmp_path / "teacher.safetensors", tmp_path / "traj", tmp_path / "run"
    save_model(_teacher(scale=0.3), teacher_file)
    generate_trajectories(teacher_file, traj, range(256), sampler="euler", nfe=8, shard_size=256, progress=False)
    assert cli_main(["distill", "train", str(traj), "--run-dir", str(run), "--steps", "50", "--batch", "32",
                     "--lr", "1e-2", "--lr-warmup", "5", "--loss", "l2", "--ckpt-every", "25", "--log-every", "25",
                     "--grid-images", "4", "--device", "cpu", "--quiet"]) == 0
    assert "collapsed" not in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    checks = [r for r in rows if "spread_ratio" in r]
    assert [r["step"] for r in checks] == [25, 50] and not any("warning" in r for r in checks)
    assert checks[0]["spread_ratio"] > 0.5 and checks[1]["spread_ratio"] > 0.8


def test_eval_finds_a_students_training_data_through_its_teacher(tmp_path):
    """A student's run records trajectories, not data: the overlap check follows the manifest to the teacher's run."""
    from fastdiffusion.metrics.sources import run_training

    teacher_ckpt, traj, run = tmp_path / "teacher" / "ckpt-00000010", tmp_path / "traj", tmp_path / "student"
    for d in (teacher_ckpt, traj, run):
        d.mkdir(parents=True)
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({"data": "digits16", "data_split": "train"}))
    (run / "config.json").write_text(json.dumps({"traj_dir": str(traj), "steps": 2}))
    manifest = {"teacher": {"path": str(teacher_ckpt / "ema.safetensors"), "sha256": "0" * 64}}
    (traj / "manifest.json").write_text(json.dumps(manifest))
    assert run_training(run / "student.safetensors") == {"data": "digits16", "data_split": "train"}
    (tmp_path / "teacher" / "config.json").unlink()  # the teacher's run is gone: nothing to check against
    assert run_training(run / "student.safetensors") is None
