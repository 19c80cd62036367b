"""Training end to end on tiny data: resume reproduces the uninterrupted run, DDP and accumulation match one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastdiffusion.errors import UserError
from fastdiffusion.training import TrainConfig, train
from fastdiffusion.training.ema import ema_beta


def tiny(run_dir, **kw) -> TrainConfig:
    base = {"run_dir": str(run_dir), "data": "digits", "net": "ddpmpp-tiny", "net_options": {"dropout": 0.0},
            "batch": 16, "steps": 6, "lr": 2e-3, "lr_warmup": 2, "ckpt_every": 3, "log_every": 1, "grid_images": 4,
            "grid_nfe": 3, "ema_halflife_kimg": 0.05, "process": "fdm-edm", "process_options": {"warmup_ite": 4}}
    return TrainConfig(**{**base, **kw})


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def weights(ckpt: Path, name="model.safetensors") -> dict:
    return load_file(str(ckpt / name))


def test_ema_beta_is_a_half_life():
    beta = ema_beta(batch=100, images_seen=10**9, halflife_kimg=1.0, rampup_ratio=None)
    assert beta**10 == pytest.approx(0.5)  # 10 steps of 100 images = one half-life of 1000 images
    # During ramp-up the half-life is rampup_ratio * images seen.
    assert ema_beta(100, 2000, 500.0, 0.05) == pytest.approx(0.5 ** (100 / 100))


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = train(tiny(tmp_path / "full"), quiet=True)
    train(tiny(tmp_path / "split", steps=3), quiet=True)
    resumed = train(tiny(tmp_path / "split"), resume=True, quiet=True)
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(full, name), weights(resumed, name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((resumed / "state.json").read_text())
    assert state["step"] == 6 and state["images_seen"] == 96
    assert state["loss_clamp"] is None  # warm-up of 4 loss evaluations is over at step 6
    mid = json.loads((tmp_path / "full" / "ckpt-00000003" / "state.json").read_text())
    assert mid["loss_clamp"] == pytest.approx(5 * 100 ** (3 / 4))


def test_accumulation_matches_one_round(tmp_path):
    a = train(tiny(tmp_path / "a", steps=3), quiet=True)
    b = train(tiny(tmp_path / "b", steps=3, accum=4), quiet=True)
    wa, wb = weights(a), weights(b)
    # Different float summation order only; a wrong gradient would move weights by ~lr = 2e-3.
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_matches_single_process(tmp_path):
    single = train(tiny(tmp_path / "one", steps=3), quiet=True)
    cfg = tiny(tmp_path / "two", steps=3)
    args = ["--run-dir", cfg.run_dir, "--data", "digits", "--net", "ddpmpp-tiny", "--net-opt", "dropout=0.0",
            "--batch", "16", "--steps", "3", "--lr", "2e-3", "--lr-warmup", "2", "--ckpt-every", "3",
            "--log-every", "1", "--grid-images", "4", "--grid-nfe", "3", "--ema-halflife-kimg", "0.05",
            "--process", "fdm-edm", "--process-opt", "warmup_ite=4", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "fastdiffusion.cli", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wa, wb = weights(single), weights(tmp_path / "two" / "ckpt-00000003")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-5)


def test_existing_run_needs_resume_and_matching_config(tmp_path):
    train(tiny(tmp_path / "r", steps=3), quiet=True)
    with pytest.raises(UserError, match="--resume"):
        train(tiny(tmp_path / "r"), quiet=True)
    with pytest.raises(UserError, match="process"):
        train(tiny(tmp_path / "r", process="edm", process_options={}), resume=True, quiet=True)


def test_points_data_trains_an_mlp(tmp_path):
    ckpt = train(tiny(tmp_path / "p", data="moons", net="mlp", net_options={}, steps=3), quiet=True)
    assert (tmp_path / "p" / "samples.png").stat().st_size > 0
    meta = json.loads((ckpt / "state.json").read_text())["model"]
    assert meta["data_shape"] == [2] and meta["net"]["arch"] == "mlp"


# Tolerances: channels_last changes memory layout and so the convolution algorithm; compile reorders float sums,
# and Adam's normalised steps turn near-zero gradient differences into weight differences up to ~lr; bf16 keeps
# 8 bits of mantissa in activations.
@pytest.mark.parametrize(("data", "net", "switch", "loss_rel", "weight_atol"), [
    ("digits", "ddpmpp-tiny", {"channels_last": True}, 1e-5, 1e-4),
    ("moons", "mlp", {"compile": True}, 1e-4, 2e-3),
    ("digits", "ddpmpp-tiny", {"precision": "bf16"}, 0.05, None),  # Adam moves weights ~lr per step either way
])
def test_performance_switches_leave_results_unchanged(tmp_path, data, net, switch, loss_rel, weight_atol):
    opts = {"data": data, "net": net, "net_options": {} if net == "mlp" else {"dropout": 0.0}, "steps": 3}
    ref = train(tiny(tmp_path / "ref", **opts), quiet=True)
    fast = train(tiny(tmp_path / "fast", **opts, **switch), quiet=True)
    assert losses(tmp_path / "fast") == pytest.approx(losses(tmp_path / "ref"), rel=loss_rel)
    if weight_atol is not None:
        wa, wb = weights(ref), weights(fast)
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < weight_atol


def test_psld_trains_and_draws_its_grid_with_the_family_default_sampler(tmp_path):
    ckpt = train(tiny(tmp_path / "psld", data="gmm", net="mlp", net_options={}, process="psld", process_options={},
                      steps=2, grid_nfe=None), quiet=True)
    assert (tmp_path / "psld" / "samples.png").stat().st_size > 0
    assert json.loads((ckpt / "state.json").read_text())["model"]["process"]["name"] == "psld"
