"""Fault injection: kills at random moments, full disks, corrupt or foreign files, non-finite losses, two trainings on
one run directory, and unsafe loading. Each test prints how many scenarios / trials it ran."""

import errno
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fastdiffusion.checkpoint as checkpoint
from fastdiffusion.errors import UserError
from fastdiffusion.models import load_model
from fastdiffusion.outputs import write_samples
from fastdiffusion.processes import FDM
from fastdiffusion.training import TrainConfig, train
from fastdiffusion.training.lock import RunLock

ARGS = ["--data", "digits", "--net", "ddpmpp-tiny", "--net-opt", "dropout=0.0", "--batch", "8", "--lr", "2e-3",
        "--lr-warmup", "2", "--log-every", "1", "--grid-images", "2", "--grid-nfe", "1", "--device", "cpu",
        "--quiet"]


def cfg(run_dir, **kw) -> TrainConfig:
    base = {"run_dir": str(run_dir), "data": "digits", "net": "ddpmpp-tiny", "net_options": {"dropout": 0.0},
            "batch": 8, "lr": 2e-3, "lr_warmup": 2, "log_every": 1, "grid_images": 2, "grid_nfe": 1,
            "device": "cpu", "steps": 6, "ckpt_every": 3}
    return TrainConfig(**{**base, **kw})


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def newest_checkpoint(run: Path) -> str:
    return max((p.name for p in run.glob("ckpt-????????")), default="")


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, record_fault):
    steps = 10
    def command(run_dir):
        return [sys.executable, "-m", "fastdiffusion.cli", "train", "--run-dir", str(run_dir), "--steps", str(steps),
                "--ckpt-every", "1", *ARGS]

    # Same process setup (threads) for both runs, so float summation order is the same.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "ref"), check=True, env=env, timeout=300)
    reference = tmp_path / "ref" / f"ckpt-{steps:08d}"
    run = tmp_path / "killed"
    cmd = command(run)
    rng, kills, launches = random.Random(0), 0, 0
    while launches < 40:
        launches += 1
        resume = ["--resume"] if run.exists() else []  # the first launch starts the run
        proc = subprocess.Popen([*cmd, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        # Kill only after this launch has written a checkpoint of its own, at a random moment of the steps and
        # checkpoint writes that follow (with --ckpt-every 1 most of a step's time is the write).
        deadline = time.time() + 120
        start = newest_checkpoint(run)
        while proc.poll() is None and time.time() < deadline and newest_checkpoint(run) <= start:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None and kills < 8:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        if proc.wait(timeout=300) == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert kills >= 3 and proc.returncode == 0
    final = run / f"ckpt-{steps:08d}"
    assert same_weights(reference / "model.safetensors", final / "model.safetensors")
    assert same_weights(reference / "ema.safetensors", final / "ema.safetensors")
    assert losses(tmp_path / "ref") == losses(run)
    assert not list(run.glob("*.tmp-*"))
    record_fault("SIGKILL at a random moment of training", kills)


def _write_checkpoints_forever(run_dir: str) -> None:
    tensors = {f"w{i}": torch.randn(256, 1024) for i in range(8)}  # 8 MiB per file: writes take a while
    step = 0
    while True:
        step += 1
        checkpoint.write_checkpoint(Path(run_dir), step, {"model.safetensors": (tensors, {}),
                                                        "ema.safetensors": (tensors, {})}, {"note": "x"})
        checkpoint.prune_checkpoints(Path(run_dir), 2)


def test_sigkill_inside_checkpoint_writes_never_leaves_a_pickable_partial(tmp_path, record_fault):
    ctx = multiprocessing.get_context("fork")
    rng, in_write = random.Random(1), 0
    trials = 12
    for _ in range(trials):
        child = ctx.Process(target=_write_checkpoints_forever, args=(str(tmp_path),))
        child.start()
        time.sleep(rng.uniform(0.05, 0.5))
        in_write += bool(list(tmp_path.glob("ckpt-*.tmp-*")))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        for ckpt in checkpoint.list_checkpoints(tmp_path):  # everything --resume could pick verifies
            checkpoint.verify_checkpoint(ckpt)
        checkpoint.clean_partial(tmp_path)
        assert not list(tmp_path.glob("*.tmp-*"))
    assert in_write >= trials // 2  # most kills landed inside a write
    record_fault("SIGKILL inside a checkpoint write", in_write)


def test_disk_full_during_checkpoint_keeps_previous_and_leaves_no_partial(tmp_path, monkeypatch, record_fault):
    real_save, calls = checkpoint.save_file, {"n": 0}

    def flaky_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 3:  # the second checkpoint's first file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", flaky_save)
    with pytest.raises(UserError, match="No space left on device.*ckpt-00000003 is intact"):
        train(cfg(tmp_path / "r"), quiet=True)
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith("ckpt-")] == ["ckpt-00000003"]
    assert train(cfg(tmp_path / "r"), resume=True, quiet=True).name == "ckpt-00000006"
    record_fault("disk full during a checkpoint", 1)


def test_sample_write_error_leaves_no_partial_file(tmp_path, monkeypatch, record_fault):
    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", no_space)
    for out in ("grid.png", "s.npz"):
        with pytest.raises(OSError):
            write_samples(torch.zeros(2, 1, 8, 8), tmp_path / out, [0, 1])
    assert list(tmp_path.iterdir()) == []
    record_fault("write error on sample output", 2)


@pytest.fixture
def two_ckpts(tmp_path):
    train(cfg(tmp_path / "r"), quiet=True)
    return tmp_path / "r"


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "state"])
def test_corrupt_newest_checkpoint_falls_back_and_says_so(two_ckpts, capsys, damage, record_fault):
    newest = two_ckpts / "ckpt-00000006"
    target = newest / ("state.json" if damage == "state" else "model.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "bitflip":
        data[len(data) - 100] ^= 0x10
    else:
        data = data[:10]
    target.write_bytes(bytes(data))
    ckpt = train(cfg(two_ckpts, steps=7), resume=True, quiet=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint ckpt-00000006" in err and ckpt.name == "ckpt-00000007"
    assert [json.loads(x)["step"] for x in (two_ckpts / "log.jsonl").read_text().splitlines()] == list(range(1, 8))
    record_fault(f"corrupt checkpoint ({damage})", 1)


def test_loading_a_corrupt_or_foreign_model_file_is_a_clear_error(two_ckpts, tmp_path, record_fault):
    ema = two_ckpts / "ckpt-00000006" / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-8] ^= 0xFF
    ema.write_bytes(bytes(data))
    with pytest.raises(UserError, match=re.escape(str(ema)) + ".*checksum"):
        load_model(two_ckpts)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(UserError, match="not a fastdiffusion model"):
        load_model(foreign)
    record_fault("corrupt or foreign model file on load", 2)


def test_checkpoint_of_another_network_or_process_is_refused(two_ckpts, record_fault):
    for change, key in (({"net": "ddpmpp-small"}, "net="), ({"process": "vp"}, "process=")):
        with pytest.raises(UserError, match=key):
            train(cfg(two_ckpts, steps=8, **change), resume=True, quiet=True)
    record_fault("checkpoint of another network or process", 2)


@pytest.mark.parametrize("policy", ["rollback", "abort"])
def test_non_finite_steps_are_skipped_then_rolled_back_or_aborted(tmp_path, monkeypatch, policy, record_fault):
    real_loss, calls = FDM.training_loss, {"n": 0}
    bad_steps = {1} | set(range(4, 7))  # one isolated fault, then three in a row

    def poisoned(self, model, x0, sigma, noise, step):
        calls["n"] += 1
        loss = real_loss(self, model, x0, sigma, noise, step)
        return loss * float("nan") if calls["n"] - 1 in bad_steps else loss

    monkeypatch.setattr(FDM, "training_loss", poisoned)
    config = cfg(tmp_path / policy, steps=9, fault_limit=3, on_faults=policy)
    if policy == "abort":
        with pytest.raises(UserError, match="diverged"):
            train(config, quiet=True)
        record_fault("non-finite loss, abort", len(bad_steps))
        return
    ckpt = train(config, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / policy / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped_nonfinite", 0) for r in rows) == 4
    state = json.loads((ckpt / "state.json").read_text())
    assert state["lr_scale"] == 0.5 and state["step"] == 9
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    record_fault("non-finite loss, skip and roll back", len(bad_steps))


def test_second_training_on_same_run_dir_is_refused_and_kill_releases(tmp_path, record_fault):
    run = tmp_path / "r"
    run.mkdir()
    lock = RunLock(run)
    with pytest.raises(UserError, match=f"in use by another training \\(pid {os.getpid()}\\)"):
        train(cfg(run), quiet=True)
    lock.release()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fastdiffusion.training.lock import "
                               "RunLock; RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match="in use"):
        RunLock(run)
    holder.kill()
    holder.wait()
    RunLock(run).release()  # the kernel dropped the dead process's lock
    record_fault("concurrent training on one run directory", 2)


def test_no_code_path_unpickles_by_default():
    src = Path(__file__).resolve().parents[1] / "fastdiffusion"
    offenders = []
    for path in src.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\((?P<args>[^)]*)\)", text):
            if "weights_only=True" not in m.group("args"):
                offenders.append(f"{path}: torch.load without weights_only=True")
        if re.search(r"\bpickle\.loads?\(|\bdill\b|\bcloudpickle\b", text):
            offenders.append(f"{path}: unpickles")
    assert not offenders, offenders
