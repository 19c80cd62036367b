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


# -- data pipeline, conditional training, configuration (issue 18) ---------------------------------------------------

def digits_zip(tmp_path) -> Path:
    """The bundled 8-px digits written as an EDM zip (with their 10 labels), made once per test directory."""
    path = tmp_path / "digits.zip"
    if not path.exists():
        from fastdiffusion.data.dataset_zip import write_dataset_zip

        write_dataset_zip("digits", path, progress=False)
    return path


def digits_npz(tmp_path) -> Path:
    """The bundled 8-px digits as an uncompressed .npz (memory-mapped by the loader), with their labels."""
    data = load_dataset("digits")
    np.savez(tmp_path / "digits.npz", images=data.samples.array, labels=data.labels.values)
    return tmp_path / "digits.npz"


def same_run(a: Path, b: Path, step: int) -> bool:
    ckpt = f"ckpt-{step:08d}"
    wa, wb = weights(a / ckpt), weights(b / ckpt)
    return losses(a) == losses(b) and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("source", ["npz", "zip"])
def test_resume_is_bit_exact_with_memory_mapped_and_streamed_data(tmp_path, source):
    """npz: memory-mapped, gathered in the training process from the step generator. zip: decoded by 2 DataLoader
    workers ahead of the step from the indices' own generator, whose position the checkpoint keeps. Both, with flips
    and conditional labels, resume to the uninterrupted run bit for bit."""
    data = str(digits_npz(tmp_path) if source == "npz" else digits_zip(tmp_path))
    opts = {"data": data, "cond": True, "xflip": True, "steps": 6}
    if source == "zip":
        opts["loader_workers"] = 2
    train(tiny(tmp_path / "full", **opts), quiet=True)
    train(tiny(tmp_path / "split", **{**opts, "steps": 3}), quiet=True)
    train(tiny(tmp_path / "split", **opts), resume=True, quiet=True)
    assert same_run(tmp_path / "full", tmp_path / "split", 6)
    state = load_file(str(tmp_path / "split" / "ckpt-00000006" / "optimizer.safetensors"))
    assert ("rng.index_generator" in state) == (source == "zip")


def test_two_gloo_processes_and_accumulation_draw_the_same_examples_from_a_zip(tmp_path):
    """From a zip with loader workers, labels and flips: 2 gloo processes, 1 process, and 1 process with 4
    accumulation rounds make the same updates (each rank decodes only its rows of the one global draw)."""
    data = str(digits_zip(tmp_path))
    extra = {"data": data, "cond": True, "xflip": True, "steps": 3, "loader_workers": 1}
    train(tiny(tmp_path / "one", **extra), quiet=True)
    train(tiny(tmp_path / "accum", accum=4, **extra), quiet=True)
    args = ["--run-dir", str(tmp_path / "two"), "--data", data, "--cond", "--xflip", "--net", "ddpmpp-tiny",
            "--net-opt", "dropout=0.0", "--batch", "16", "--steps", "3", "--lr", "2e-3", "--lr-warmup", "2",
            "--ckpt-every", "3", "--log-every", "1", "--grid-images", "4", "--grid-nfe", "3", "--ema-halflife-kimg",
            "0.05", "--process", "fdm-edm", "--process-opt", "warmup_ite=4", "--loader-workers", "1", "--device",
            "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "fastdiffusion.cli", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = weights(tmp_path / "one" / "ckpt-00000003")
    for other in ("two", "accum"):
        got = weights(tmp_path / other / "ckpt-00000003")
        assert all(torch.allclose(ref[k], got[k], atol=1e-5) for k in ref), other
        assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / other), rel=1e-5), other


def test_labels_reach_the_network_one_hot_with_dropout_drawn_for_the_global_batch():
    """draw_batch turns the fetched classes into EDM's one-hot rows, zeroing the rows whose label is dropped (one
    uniform per example of the global batch, after the noise), and the loss hands them to model(x, sigma, labels)."""
    from fastdiffusion.data import Fetched
    from fastdiffusion.processes import make_process
    from fastdiffusion.training.loop import draw_batch

    cfg = TrainConfig(batch=400, cond=True, label_dropout=0.25)
    process = make_process("edm")
    classes = torch.arange(400) % 7
    fetched = Fetched(torch.zeros(400, 1, 2, 2, dtype=torch.uint8), classes)
    batch = draw_batch(fetched, cfg, process, torch.Generator().manual_seed(5), label_dim=7)
    kept = batch.labels.sum(1) == 1
    assert torch.equal(batch.labels[kept].argmax(1), classes[kept]) and (batch.labels[~kept] == 0).all()
    gen = torch.Generator().manual_seed(5)  # the dropout draw comes after sigma and noise, from the same generator
    process.sample_sigma(400, gen)
    torch.randn(400, 1, 2, 2, generator=gen)
    assert torch.equal(kept, torch.rand(400, generator=gen) >= 0.25) and 0.65 < kept.float().mean() < 0.85
    half = draw_batch(Fetched(fetched.x[200:], classes[200:]), cfg, process, torch.Generator().manual_seed(5),
                      slice(200, 400), label_dim=7)
    assert torch.equal(half.labels, batch.labels[200:]) and torch.equal(half.noise, batch.noise[200:])
    seen = []

    def model(x, sigma, labels):
        seen.append(labels)
        return x

    process.training_loss(model, batch.x0, batch.sigma, batch.noise, class_labels=batch.labels)
    assert seen[0] is batch.labels


def test_conditional_run_records_its_classes_and_draws_one_class_per_seed(tmp_path):
    ckpt = train(tiny(tmp_path / "c", cond=True, steps=2, ckpt_every=2), quiet=True)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["cond"] and cfg["label_dropout"] == 0.1 and cfg["net_options"]["label_dim"] == 10
    model = fd.load_model(ckpt)
    assert model.net_config["label_dim"] == 10 and model.net_config.get("label_dropout", 0) == 0
    meta = json.loads((ckpt / "state.json").read_text())["model"]
    assert meta["data"] == {"spec": "digits", "split": "all", "num_classes": 10,
                            "class_names": [str(k) for k in range(10)]}
    # The grid shows class seed mod 10 for seeds 0-3.
    noise = fd.SeededNoise(range(4))
    x = fd.sample(model, noise.randn(model.data_shape), sampler="heun", nfe=3, noise_fn=noise,
                  class_labels=torch.arange(4))
    other = fd.sample(model, noise.randn(model.data_shape), sampler="heun", nfe=3, noise_fn=noise,
                      class_labels=torch.arange(4) + 1)
    png = np.array(Image.open(tmp_path / "c" / "samples.png"))
    save_samples(x, tmp_path / "want.png")
    save_samples(other, tmp_path / "other.png")
    assert np.array_equal(png, np.array(Image.open(tmp_path / "want.png")))
    assert not np.array_equal(png, np.array(Image.open(tmp_path / "other.png")))


@pytest.mark.parametrize(("kw", "needles"), [
    ({"data": "moons", "net": "mlp", "net_options": {}, "cond": True}, ["--cond", "moons", "no class labels"]),
    ({"net_options": {"label_dim": 10}}, ["label_dim=10", "--cond"]),
    ({"cond": True, "net_options": {"label_dim": 4}}, ["label_dim=4", "10 classes"]),
    ({"label_dropout": 0.2}, ["--label-dropout", "--cond"]),
    ({"cond": True, "label_dropout": 1.0}, ["--label-dropout", "[0, 1)"]),
    ({"net_options": {"label_dropout": 0.1}}, ["label_dropout", "--label-dropout"]),
    ({"process_options": {"multiplier": "abc"}}, ["multiplier=abc", "number"]),
    ({"logger": "wandb"}, ["--logger", "tensorboard"]),
    ({"data_split": "val"}, ["--data-split", "train"]),
    ({"device": "banana"}, ["--device banana", "cpu"]),
])
def test_conditioning_and_config_errors_are_one_line(tmp_path, kw, needles):
    with pytest.raises(UserError) as info:
        train(tiny(tmp_path / "r", **kw), quiet=True)
    msg = str(info.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not list((tmp_path / "r").glob("ckpt-*"))


def test_unlabelled_folder_with_cond_is_one_line_at_the_cli(tmp_path, capsys):
    from fastdiffusion.cli import main

    for k in range(2):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    assert main(["train", "--data", str(tmp_path), "--cond", "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no class labels" in err[0] and "fastdiffusion dataset" in err[0]


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: run the command in this process; (exit code, stdout, stderr)."""
    from fastdiffusion.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_resume_with_steps_continues_the_saved_configuration(tmp_path, cli):
    """The README's own example: `train --run-dir R --resume --steps N` keeps every other saved setting (config.json
    is not rewritten from the defaults), and a changed data set is still refused."""
    run = tmp_path / "run"
    first = ["--data", str(digits_zip(tmp_path)), "--net", "ddpmpp-tiny", "--net-opt", "dropout=0.0", "--batch", "8",
             "--steps", "2", "--lr", "3e-3", "--lr-warmup", "1", "--ema-halflife-kimg", "0.02", "--ckpt-every", "2",
             "--log-every", "1", "--grid-images", "2", "--grid-nfe", "1", "--process", "edm", "--process-opt",
             "P_mean=-1.0", "--cond", "--label-dropout", "0.2", "--seed", "7", "--loader-workers", "0", "--quiet"]
    assert cli("train", "--run-dir", str(run), *first)[0] == 0
    saved = json.loads((run / "config.json").read_text())
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--steps", "3", "--log-every", "2", "--quiet")
    assert code == 0, err
    now = json.loads((run / "config.json").read_text())
    assert now == {**saved, "steps": 3, "log_every": 2}
    state = json.loads((run / "ckpt-00000003" / "state.json").read_text())
    assert state["step"] == 3 and state["config"] == now
    code, out, _ = cli("train", "--run-dir", str(run), "--resume", "--steps", "9", "--process-opt", "P_std=1.1",
                       "--dry-run")
    assert code == 0 and json.loads(out)["process_options"] == {"P_mean": -1.0, "P_std": 1.1}
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--data", "digits", "--steps", "4")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "data=" in lines[0]


def test_resume_without_a_run_and_with_config_are_one_line(tmp_path, cli):
    for argv, needle in ((["--run-dir", str(tmp_path / "none"), "--resume"], "does not exist"),
                         (["--run-dir", str(tmp_path), "--resume"], "holds no run"),
                         (["--resume", "--config", str(tmp_path / "c.json")], "drop --config")):
        code, _, err = cli("train", *argv, "--quiet")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "none").exists()
    with pytest.raises(UserError, match="does not exist"):
        train(tiny(tmp_path / "none"), resume=True, quiet=True)


def test_presets_state_their_data_steps_warmup_and_run_dir(tmp_path, cli):
    from fastdiffusion.training.config import PRESETS

    for name, p in PRESETS.items():
        assert {"run_dir", "steps", "lr_warmup"} <= set(p.config) and p.about, name
        assert ("data" in p.config) != (p.needs_data is not None), name
    code, out, _ = cli("train", "--preset", "demo", "--dry-run")
    cfg = json.loads(out)
    assert code == 0 and cfg["data"] == "digits16" and cfg["data_split"] == "train"
    assert (cfg["steps"], cfg["lr_warmup"], cfg["run_dir"]) == (1200, 100, "runs/demo")
    code, _, err = cli("train", "--preset", "edm-cifar10", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "fastdiffusion dataset" in lines[0] and "--data" in lines[0]
    code, out, _ = cli("train", "--preset", "fdm-edm-cifar10", "--data", "c.zip", "--dry-run")
    cfg = json.loads(out)
    assert (cfg["data"], cfg["steps"], cfg["lr_warmup"], cfg["batch"]) == ("c.zip", 390625, 19531, 512)
    assert cfg["process_options"] == {"multiplier": 2.0, "warmup_ite": 200} and cfg["run_dir"] == "runs/fdm-edm-cifar10"


def test_startup_line_warmup_warning_and_grids_per_checkpoint(tmp_path, cli):
    run = tmp_path / "r"
    code, out, err = cli("train", "--run-dir", str(run), "--data", "digits", "--data-split", "train", "--batch", "8",
                         "--steps", "4", "--ckpt-every", "2", "--grid-images", "2", "--grid-nfe", "1")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("train:"))
    params = sum(v.numel() for v in weights(run / "ckpt-00000004").values())
    assert str(run) in line and f"{params / 1e6:.2f}M parameters" in line
    assert "1,437 images 1x8x8 (0.1 MB uint8, in memory; 10 classes)" in line
    assert "warning: --steps 4 < --lr-warmup 100" in err
    grids = sorted(p.name for p in run.glob("samples*.png"))
    assert grids == ["samples-00000002.png", "samples-00000004.png", "samples.png"]
    assert (run / "samples.png").read_bytes() == (run / "samples-00000004.png").read_bytes()
    assert (run / "samples-00000002.png").read_bytes() != (run / "samples.png").read_bytes()


def test_init_from_starts_from_another_models_ema_weights(tmp_path, digits_run):
    from fastdiffusion.training.loop import Trainer

    _, source = digits_run
    ema = weights(source, "ema.safetensors")
    trainer = Trainer(tiny(tmp_path / "ft", init_from=str(source), cond=True), quiet=True)
    try:
        mine = trainer.model.net.state_dict()
        shared = [k for k in mine if k in ema]
        assert len(shared) < len(mine)  # the class embedding is new and keeps its initialisation
        assert all(torch.equal(mine[k], ema[k]) for k in shared)
        assert all(torch.equal(trainer.ema.model.net.state_dict()[k], ema[k]) for k in shared)
    finally:
        trainer.close()
    with pytest.raises(UserError, match="--init-from .*use the same --net"):
        train(tiny(tmp_path / "bad", init_from=str(source), net_options={"model_channels": 16}), quiet=True)


def test_tensorboard_logger_mirrors_the_log_and_is_a_clear_error_when_missing(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    train(tiny(run, steps=3, logger="tensorboard"), quiet=True)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in rows]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.step for e in events.Images("samples")] == [3]
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(UserError, match=r"pip install 'fastdiffusion\[tensorboard\]'"):
        train(tiny(tmp_path / "none", logger="tensorboard"), quiet=True)


def test_every_train_and_distill_train_flag_has_a_one_line_description_with_choices():
    from fastdiffusion.cli import build_parser
    from fastdiffusion.data import BUNDLED
    from fastdiffusion.nets import PRESETS as NETS
    from fastdiffusion.processes import PROCESS_NAMES
    from fastdiffusion.training.config import PRESETS

    sub = build_parser()._subparsers._group_actions[0].choices
    distill_train = sub["distill"]._subparsers._group_actions[0].choices["train"]
    for parser in (sub["train"], distill_train):
        for action in parser._actions:
            if action.dest != "help":
                assert action.help and "\n" not in action.help, action.dest
    helps = {a.dest: a.help for a in sub["train"]._actions}
    assert all(name in helps["data"] for name in BUNDLED) and all(name in helps["net"] for name in NETS)
    assert all(name in helps["process"] for name in PROCESS_NAMES) and all(name in helps["preset"] for name in PRESETS)
    assert "(default: 2000)" in helps["steps"] and "jsonl | tensorboard" in helps["logger"]


def test_a_killed_run_with_loader_workers_leaves_its_run_directory_free_at_once(tmp_path):
    """SIGKILL the training process while its DataLoader workers live on: the run-directory lock goes with it (the
    workers closed their inherited copy of the lock), so a relaunch can start at once."""
    import signal
    import time

    from fastdiffusion.training.lock import RunLock

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastdiffusion.cli", "train", "--run-dir", str(run), "--data",
                             str(digits_zip(tmp_path)), "--loader-workers", "2", "--batch", "8", "--steps", "10000",
                             "--ckpt-every", "1", "--grid-images", "1", "--grid-nfe", "1", "--quiet"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(run.glob("ckpt-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    alive = [w for w in workers if Path(f"/proc/{w}").exists()]
    RunLock(run).release()
    assert len(workers) == 2 and alive  # the workers outlived their parent, yet held no lock
