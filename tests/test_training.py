"""Training end to end on tiny data: the loss approaches the exact minimiser, the sample grid holds the EMA model's
samples, checkpoints reload exactly, resume reproduces the uninterrupted run, DDP and accumulation match one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fastdiffusion as fd
from fastdiffusion.bench.psld_exact import PSLDMixtureEps
from fastdiffusion.data import load_dataset
from fastdiffusion.errors import UserError
from fastdiffusion.plots import save_samples
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


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Six steps of FDM-EDM on 8x8 digits (checkpoints at 3 and 6, a 2x2 heun-3 grid): (run dir, last checkpoint)."""
    run = tmp_path_factory.mktemp("digits") / "full"
    return run, train(tiny(run), quiet=True)


def test_resume_reproduces_uninterrupted_run(tmp_path, digits_run):
    full_dir, full = digits_run
    train(tiny(tmp_path / "split", steps=3), quiet=True)
    resumed = train(tiny(tmp_path / "split"), resume=True, quiet=True)
    assert losses(full_dir) == losses(tmp_path / "split")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(full, name), weights(resumed, name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((resumed / "state.json").read_text())
    assert state["step"] == 6 and state["images_seen"] == 96
    assert state["loss_clamp"] is None  # warm-up of 4 loss evaluations is over at step 6
    mid = json.loads((full_dir / "ckpt-00000003" / "state.json").read_text())
    assert mid["loss_clamp"] == pytest.approx(5 * 100 ** (3 / 4), rel=1e-12)


def test_grid_png_holds_the_ema_models_samples(digits_run):
    """samples.png is the 2x2 grid (1 px padding, upscaled x32 without smoothing) of exactly what the checkpoint's
    EMA model samples for seeds 0-3 with the run's grid sampler (heun, 3 NFE), in uint8 of [-1, 1]."""
    run, ckpt = digits_run
    model = fd.load_model(ckpt)
    noise = fd.SeededNoise(range(4))
    x = fd.sample(model, noise.randn(model.data_shape), sampler="heun", nfe=3, noise_fn=noise)
    want = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0]
    png = torch.from_numpy(np.array(Image.open(run / "samples.png")))
    scale = 256 // 8
    assert png.shape == ((2 * 9 + 1) * scale, (2 * 9 + 1) * scale)
    tiles = torch.stack([png[(1 + 9 * r) * scale::scale][:8, (1 + 9 * q) * scale::scale][:, :8]
                         for r in range(2) for q in range(2)])
    assert torch.equal(tiles, want) and want.float().std() > 10


def test_checkpoint_reloads_to_identical_outputs(tmp_path, digits_run):
    """The run dir loads its newest checkpoint's EMA weights (not the raw ones, which differ after EMA), and a model
    saved with ``save_model`` reloads to bit-identical denoiser outputs."""
    run, ckpt = digits_run
    model = fd.load_model(run)
    for loaded, name in ((model, "ema.safetensors"), (fd.load_model(ckpt, ema=False), "model.safetensors")):
        stored = weights(ckpt, name)
        assert all(torch.equal(v, stored[k]) for k, v in loaded.net.state_dict().items())
    raw = weights(ckpt)
    assert any(not torch.equal(v, raw[k]) for k, v in model.net.state_dict().items())
    fd.save_model(model, tmp_path / "m.safetensors")
    again = fd.load_model(tmp_path / "m.safetensors")
    x = torch.randn(5, *model.data_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.3, 1.0, 10.0, 80.0])
    with torch.no_grad():
        assert torch.equal(again(x, sigma), model(x, sigma))
    assert again.process.config() == model.process.config() and again.net_config == model.net_config


@torch.no_grad()
def excess_loss(ckpt, mixture, n: int = 4096) -> float:
    """Training loss of the raw weights in ``ckpt`` minus that of the exact minimiser (the mixture's float64 denoiser,
    or its exact PSLD eps) on one fixed batch of data, noise levels and noise (no FDM warm-up clamp)."""
    model = fd.load_model(ckpt, ema=False)
    process, gen = model.process, torch.Generator().manual_seed(321)
    x0 = mixture.sample(n, gen, dtype=torch.float32)
    sigma = process.sample_sigma(n, gen)
    noise = torch.randn(process.noise_shape(x0.shape), generator=gen)
    if process.family == "psld":
        exact = PSLDMixtureEps(mixture, process)
    else:
        def exact(x, s):
            return mixture.denoise(x.double(), s).float()
    return float(process.training_loss(model, x0, sigma, noise, 10**9) - process.training_loss(exact, x0, sigma,
                                                                                                 noise, 10**9))


@pytest.mark.parametrize(("process", "steps", "ratio"), [("fdm-edm", 80, 0.75), ("psld", 40, 0.5)])
def test_training_approaches_the_exact_minimiser(tmp_path, process, steps, ratio):
    """On the 8-Gaussian ring (exact denoiser known) an MLP's loss in excess of the exact minimiser's, on a fixed
    evaluation batch, falls below ``ratio`` of its value after the first step (measured: 0.58 and 0.31)."""
    opts = {"data": "gmm", "net": "mlp", "net_options": {}, "process": process,
            "process_options": {"warmup_ite": 4} if process == "fdm-edm" else {}, "grid_nfe": 1,
            "grid_sampler": "em" if process == "psld" else None}
    first = train(tiny(tmp_path / "one", steps=1, ckpt_every=1, **opts), quiet=True)
    last = train(tiny(tmp_path / "many", steps=steps, ckpt_every=steps, **opts), quiet=True)
    mixture = load_dataset("gmm").gmm
    start, end = excess_loss(first, mixture), excess_loss(last, mixture)
    assert 0 < end < ratio * start, (start, end)


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


def rendered(points: torch.Tensor, data: str, path) -> np.ndarray:
    """The pixels of ``save_samples``' scatter plot of ``points`` over the first 4000 data points (what training
    draws for point data)."""
    save_samples(points, path, reference=load_dataset(data).x[:4000])
    return np.array(Image.open(path))


def test_points_data_trains_an_mlp(tmp_path):
    ckpt = train(tiny(tmp_path / "p", data="moons", net="mlp", net_options={}, steps=3), quiet=True)
    meta = json.loads((ckpt / "state.json").read_text())["model"]
    assert meta["data_shape"] == [2] and meta["net"]["arch"] == "mlp"
    # The scatter plot shows the EMA model's heun-3 samples for seeds 0-3, and a different sample set would show.
    model = fd.load_model(ckpt)
    noise = fd.SeededNoise(range(4))
    x = fd.sample(model, noise.randn((2,)), sampler="heun", nfe=3, noise_fn=noise)
    png = np.array(Image.open(tmp_path / "p" / "samples.png"))
    assert np.array_equal(png, rendered(x, "moons", tmp_path / "same.png"))
    assert not np.array_equal(png, rendered(x + 0.3, "moons", tmp_path / "moved.png"))


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
    """No grid sampler given: the PSLD run draws its grid with the family default (SSCS, 100 NFE), not with another
    sampler, from its EMA model and seeds 0-3."""
    ckpt = train(tiny(tmp_path / "psld", data="gmm", net="mlp", net_options={}, process="psld", process_options={},
                      steps=2, grid_nfe=None), quiet=True)
    model = fd.load_model(ckpt)
    assert model.process.config()["name"] == "psld" and model.net_config["arch"] == "mlp"

    def draw(sampler):
        noise = fd.SeededNoise(range(4))
        return fd.sample(model, noise.randn((2,)), sampler=sampler, nfe=100, noise_fn=noise)

    png = np.array(Image.open(tmp_path / "psld" / "samples.png"))
    assert np.array_equal(png, rendered(draw("sscs"), "gmm", tmp_path / "sscs.png"))
    assert not np.array_equal(png, rendered(draw("em"), "gmm", tmp_path / "em.png"))
