"""DSNO: the temporal Fourier layer, the operator student, trajectory shards, a tiny distillation, one-call sampling."""

import argparse
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastdiffusion.cli import main as cli_main
from fastdiffusion.distill import TrajectorySet, generate_trajectories, output_steps, read_manifest
from fastdiffusion.distill.cli import add_parser
from fastdiffusion.errors import UserError
from fastdiffusion.models import load_model
from fastdiffusion.nets import build_net, net_config
from fastdiffusion.nets.operator import TimeConv
from fastdiffusion.sampling import generate, sample
from fastdiffusion.seeds import SeededNoise
from fastdiffusion.training import TrainConfig, train

M = 4
BACKBONES = {
    "unet": (net_config("ddpmpp-tiny", img_resolution=8, in_channels=1), (1, 8, 8)),
    "mlp": (net_config("mlp", in_channels=2, width=64, num_blocks=2), (2,)),
}


def _teacher_and_student(name, modes=2):
    torch.manual_seed(0)
    cfg, shape = BACKBONES[name]
    teacher = build_net(**cfg)
    with torch.no_grad():  # move off EDM's near-zero init of the residual branches so the test means something
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = build_net(**net_config("dsno", in_channels=cfg["in_channels"], backbone=cfg, num_times=M, modes=modes))
    student.backbone.load_state_dict(teacher.state_dict())
    return teacher.eval(), student.eval(), shape


def _randomise_time_convs(student):
    with torch.no_grad():
        for tc in student.time_convs:
            tc.weight.normal_(0, 0.3)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_student_at_init_is_the_teacher_at_each_output_time(name):
    teacher, student, shape = _teacher_and_student(name)
    x, c = torch.randn(3, *shape), torch.tensor([-1.5, -0.5, 0.3, 1.0])
    with torch.no_grad():
        out = student(x, c)
        ref = torch.stack([teacher(x, c[m]) for m in range(M)], 1)
        assert out.shape == (3, M, *shape)
        assert (out - ref).abs().max() < 1e-5
        _randomise_time_convs(student)  # the layers are on the path: non-zero weights change the output
        assert (student(x, c) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(BACKBONES))
def test_student_is_equivariant_to_batch_order(name):
    _, student, shape = _teacher_and_student(name)
    _randomise_time_convs(student)
    x, c = torch.randn(5, *shape), torch.linspace(-1, 1, M)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        assert torch.allclose(student(x, c)[perm], student(x[perm], c), atol=1e-5)


@pytest.mark.parametrize("modes", [1, 2, M // 2 + 1])
def test_timeconv_mixes_only_along_time(modes):
    torch.manual_seed(1)
    tc = TimeConv(channels=3, num_times=M, modes=modes)
    u = torch.randn(2, M, 3, 5, 6)
    assert torch.equal(tc(u), u)  # zero-initialised: exactly the identity
    with torch.no_grad():
        tc.weight.normal_()
    du = torch.zeros_like(u)
    du[1, 2, 0, 3, 4] = 1.0  # sample 1, time 2, channel 0, pixel (3, 4)
    with torch.no_grad():
        change = (tc(u + du) - tc(u)).abs()
    outside = change.clone()
    outside[1, :, :, 3, 4] = 0
    assert outside.max() < 1e-6  # no other sample and no other pixel moves
    assert (change[1, :, :, 3, 4] > 1e-6).sum() > M  # that pixel's other times and channels do
    # The layer is linear in u: mode k of the output depends on mode k of the input only (a spectral filter).
    assert torch.allclose(tc(2 * u) - u * 2, 2 * (tc(u) - u), atol=1e-5)


def test_output_steps_follow_the_grids():
    assert output_steps(16, 4, "quadratic") == [16, 15, 12, 7]  # tau = 0, 1/16, 1/4, 9/16
    assert output_steps(16, 4, "uniform") == [16, 12, 8, 4]
    assert output_steps(8, 4, "quadratic") == [8, 7, 6, 3]
    with pytest.raises(UserError, match="raise --nfe"):
        output_steps(3, 4, "quadratic")


# -- a 2-D toy teacher shared by the trajectory and distillation tests ---------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("dsno") / "teacher"
    cfg = TrainConfig(run_dir=str(run), data="moons", net="mlp", net_options={"width": 128, "num_blocks": 2},
                      process="edm", batch=256, steps=300, lr=3e-3, lr_warmup=20, ema_halflife_kimg=5,
                      ckpt_every=300, log_every=100, grid_images=16, grid_nfe=3, device="cpu")
    train(cfg, quiet=True)
    return run


def _cli(argv):
    parser = argparse.ArgumentParser(prog="fastdiffusion")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.safetensors"))}


def test_trajectories_match_direct_sampling_and_resume(teacher_dir, tmp_path):
    out = tmp_path / "traj"
    kw = dict(sampler="dpmpp-2m", nfe=8, times=M, grid="quadratic", shard_size=4, dtype="fp32", progress=False)
    manifest = generate_trajectories(teacher_dir, out, range(10), **kw)
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2] and manifest["step_index"] == [8, 7, 6, 3]
    shards = [load_file(str(out / s["file"])) for s in manifest["shards"]]
    x = torch.cat([s["x"] for s in shards])
    assert torch.equal(torch.cat([s["seeds"] for s in shards]), torch.arange(10))

    model = load_model(teacher_dir)
    direct = generate(model, list(range(10)), sampler="dpmpp-2m", nfe=8, batch=3, progress=False)
    assert torch.allclose(x[:, 0], direct, atol=1e-5)  # m = 0 is the final sample
    states = []  # every state of one direct run, x_1 .. x_N
    z = SeededNoise(range(10)).randn((2,))
    sample(model, z, sampler="dpmpp-2m", nfe=8, callback=lambda d: states.append(d["x"]))
    for m, j in enumerate(manifest["step_index"]):
        assert torch.allclose(x[:, m], states[j - 1], atol=1e-5)
    assert torch.allclose(torch.cat([s["noise"] for s in shards]), SeededNoise(range(10)).randn((2,)))

    # Resume: complete shards are kept as they are, a missing one and a stale temp file are dealt with.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    reference = _files(out)
    (out / "shard-00001.safetensors").unlink()
    (out / ".shard-00001.safetensors.abc.tmp").write_bytes(b"partial")
    generate_trajectories(teacher_dir, out, range(10), **kw)
    assert _files(out) == reference
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-0000[02]*")} == {
        k: v for k, v in before.items() if k != "shard-00001.safetensors"}
    assert not list(out.glob("*.tmp"))
    with pytest.raises(UserError, match="other settings"):
        generate_trajectories(teacher_dir, out, range(10), **{**kw, "nfe": 10})

    # Two ranks write shards 0, 2 and 1: together the same files.
    split = tmp_path / "split"
    for rank in (1, 0):
        generate_trajectories(teacher_dir, split, range(10), rank=rank, world=2, **kw)
    assert _files(split) == reference
    noise, xs = TrajectorySet(split).rows([9, 0, 5])
    assert torch.equal(xs, x[[9, 0, 5]]) and noise.shape == (3, 2)


def test_tiny_distill_beats_the_baselines_and_samples_in_one_call(teacher_dir, tmp_path):
    traj, run = tmp_path / "traj", tmp_path / "student"
    _cli(["distill", "trajectories", str(teacher_dir), "--sampler", "heun", "--nfe", "15", "--times", str(M),
          "--seeds", "0-2559", "--shard-size", "512", "--out", str(traj), "--dtype", "fp16", "--quiet",
          "--device", "cpu"])
    assert read_manifest(traj)["step_index"] == [8, 7, 6, 3]
    _cli(["distill", "train", str(traj), "--teacher", str(teacher_dir), "--modes", "2", "--run-dir", str(run),
          "--steps", "300", "--batch", "128", "--lr", "2e-3", "--lr-warmup", "20", "--loss", "l2", "--holdout", "512",
          "--ema-halflife-kimg", "5", "--ckpt-every", "300", "--log-every", "100", "--device", "cpu", "--quiet"])

    student = load_model(run / "student.safetensors")
    noise, x = TrajectorySet(traj).rows(range(2048, 2560))  # held out: never trained on
    final = x[:, 0]
    calls = []
    student.net.register_forward_hook(lambda *a: calls.append(1))
    got = sample(student, noise, sampler="dsno", nfe=1)
    assert len(calls) == 1
    student_err = float((got - final).square().mean())
    noise_baseline = float((noise - final).square().mean())  # the noise itself as the sample
    mean_baseline = float((final - final.mean(0)).square().mean())  # the best constant
    assert student_err < 0.05 * noise_baseline and student_err < 0.05 * mean_baseline, (
        student_err, noise_baseline, mean_baseline)
    assert load_model(run).generator_config == student.generator_config  # the checkpoint's EMA file loads too

    # The trajectory through the callback, noise end first; its last point is the sample.
    points = []
    sample(student, noise[:8], sampler="dsno", nfe=1, callback=points.append)
    assert [p["i"] for p in points] == list(range(M)) and float(points[-1]["sigma"]) == 0.0
    assert torch.allclose(points[-1]["x"], got[:8], atol=1e-6)
    with pytest.raises(UserError, match="--nfe 1"):
        sample(student, noise, sampler="dsno", nfe=2)
    with pytest.raises(UserError, match="dsno"):
        sample(student, noise, sampler="heun", nfe=5)

    out = tmp_path / "s.npz"
    assert cli_main(["sample", str(run / "student.safetensors"), "--sampler", "dsno", "--nfe", "1", "--seeds", "0-7",
                     "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert np.load(out)["samples"].shape == (8, 2)


def test_distill_resume_reproduces_the_uninterrupted_run(teacher_dir, tmp_path):
    from fastdiffusion.distill import DistillConfig, distill

    traj = tmp_path / "traj"
    generate_trajectories(teacher_dir, traj, range(64), sampler="euler", nfe=8, shard_size=32, progress=False)
    base = dict(traj_dir=str(traj), batch=16, lr=1e-3, lr_warmup=2, ckpt_every=3, log_every=1, loss="l1",
                ema_halflife_kimg=0.05, device="cpu", grid_images=4)
    full = distill(DistillConfig(run_dir=str(tmp_path / "full"), steps=6, **base), quiet=True)
    distill(DistillConfig(run_dir=str(tmp_path / "split"), steps=3, **base), quiet=True)
    resumed = distill(DistillConfig(run_dir=str(tmp_path / "split"), steps=6, **base), resume=True, quiet=True)
    a, b = load_file(str(full)), load_file(str(resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="modes"):
        distill(DistillConfig(run_dir=str(tmp_path / "split"), steps=9, modes=1, **base), resume=True, quiet=True)
    assert os.path.isfile(tmp_path / "full" / "samples.png")


def test_time_subsets_and_the_no_timeconv_ablation(teacher_dir, tmp_path):
    from fastdiffusion.distill import DistillConfig, DistillTrainer, select_times

    traj = tmp_path / "traj"
    manifest = generate_trajectories(teacher_dir, traj, range(32), sampler="euler", nfe=16, times=M, grid="quadratic",
                                     shard_size=32, progress=False)
    idx, view = select_times(manifest, 2)
    assert idx == [0, 2] and view["times"] == 2 and view["sigmas"] == [manifest["sigmas"][0], manifest["sigmas"][2]]
    assert view["step_index"] == output_steps(16, 2, "quadratic")  # the subset is the M = 2 grid itself
    assert view["tau"] == [0.0, 0.25] and len(view["cond_sigmas"]) == 2
    with pytest.raises(UserError, match="must divide"):
        select_times(manifest, 3)

    base = dict(traj_dir=str(traj), batch=8, steps=2, lr_warmup=1, ckpt_every=2, log_every=1, device="cpu",
                grid_images=4)
    final_only = DistillTrainer(DistillConfig(run_dir=str(tmp_path / "a"), times=1, modes=0, **base), quiet=True)
    try:
        assert len(final_only.model.net.time_convs) == 0 and final_only.model.net.num_times == 1
        z, x = final_only.rows([0, 1])
        assert x.shape == (2, 1, 2) and torch.equal(x[:, 0], TrajectorySet(traj).rows([0, 1])[1][:, 0])
        final_only.run()
    finally:
        final_only.close()
    student = load_model(tmp_path / "a" / "student.safetensors")
    assert sample(student, torch.randn(5, 2), sampler="dsno", nfe=1).shape == (5, 2)
