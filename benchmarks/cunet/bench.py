"""Continuous U-Net vs DDPM++ U-Net (issue 7): the measurements that need trained models and an otherwise idle GPU.

For each trained model (``--model NAME=FILE``, files written by ``benchmarks/digits32/train_eval.py --save``):

* parameters and FLOPs per call counted by ``torch.utils.flop_counter`` at 32 px; latency per call at batch 1 and 256
  (bf16 autocast, median of repeated calls after warm-up, ``fastdiffusion.nets.profile.profile_net``);
* training throughput alone on the GPU: s/kimg of the same training step the study used (eager bf16, batch 256),
  median over timed windows after warm-up; it converts the study's FD-vs-kimg curves into FD at equal wall-clock;
* sampling time for 35 NFE (heun) at batch 1 and 256;
* noise robustness: denoising PSNR ``10 log10(2^2 / MSE(D(x + sigma n; sigma), x))`` on the 360 test-split digits
  for sigma in ``SIGMAS`` (images in [-1, 1], so the peak-to-peak range is 2);
* solver ablation (continuous U-Nets only): the trained model's ODE blocks re-run with other solvers and step
  counts at sampling time: FD-digits (heun 35 NFE, seeds 0..n-1) and latency at batch 256.

    python benchmarks/cunet/bench.py --model cunet-small=runs/cunet.safetensors \\
        --model ddpmpp-small=runs/edm.safetensors --out benchmarks/cunet/bench.json
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.timing import timed_windows
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data import load_dataset
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.models import load_model
from fastdiffusion.nets.cunet import ODEBlock
from fastdiffusion.nets.profile import count_flops, profile_net
from fastdiffusion.sampling import generate
from fastdiffusion.training import TrainConfig, Trainer

SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# CPU only to smoke-test this script; the figures are measured on CUDA.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SOLVERS = (("euler", 1), ("euler", 2), ("midpoint", 1), ("rk4", 1), ("rk4", 2))


def seconds(fn, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls (device-side timing on CUDA)."""
    return timed_windows(fn, DEVICE, warmup, 1, repeats)


def options(cfg: dict) -> dict:
    """A network config without the arguments ``net_config`` takes by name: the options that rebuild it."""
    return {k: v for k, v in cfg.items() if k not in ("arch", "img_resolution", "in_channels", "out_channels")}


def train_s_per_kimg(model, batch: int = 256, steps: int = 20) -> float:
    """s/kimg of the study's training step (eager bf16, no compile) for this model's network and process."""
    cfg = TrainConfig(run_dir=f"/tmp/cunet-bench-{time.time_ns()}", data="digits32", data_split="train",
                      process=model.process.config()["name"], net=model.net_config["arch"],
                      net_options=options(model.net_config), batch=batch, compile=False, channels_last=False)
    trainer = Trainer(cfg, quiet=True)
    window_s = seconds(lambda: [trainer.train_step() for _ in range(steps)], warmup=1, repeats=5)
    trainer.close()
    return window_s / (steps * batch / 1000)


def set_solver(model, method: str, steps: int) -> None:
    for m in model.modules():
        if isinstance(m, ODEBlock):
            m.method, m.steps = method, steps


@torch.no_grad()
def psnr_vs_sigma(model, images: torch.Tensor) -> dict[str, float]:
    gen = torch.Generator(device=images.device).manual_seed(0)
    out = {}
    for sigma in SIGMAS:
        noisy = images + sigma * torch.randn(images.shape, generator=gen, device=images.device)
        with torch.autocast(DEVICE.type, torch.bfloat16):
            den = model(noisy, torch.full((len(images),), sigma, device=images.device)).float()
        out[str(sigma)] = 10 * math.log10(4.0 / float((den - images).square().mean()))
    return out


def samples(model, n: int) -> torch.Tensor:
    with torch.autocast(DEVICE.type, torch.bfloat16):
        return generate(model, list(range(n)), batch=1000, device=DEVICE, sampler="heun", nfe=35, progress=False)


def sampling_seconds(model, batch: int) -> float:
    def run() -> None:
        with torch.autocast(DEVICE.type, torch.bfloat16):
            generate(model, list(range(batch)), batch=batch, device=DEVICE, sampler="heun", nfe=35, progress=False)

    return seconds(run, warmup=1, repeats=3)


def solver_ablation(model, n_eval: int) -> list[dict]:
    """FD-digits and batch-256 latency of the trained model with its ODE blocks re-run by each of ``SOLVERS``."""
    cfg = model.net_config
    trained = (cfg.get("solver", "rk4"), cfg.get("solver_steps", 1))
    x = torch.randn(256, *model.data_shape, device=DEVICE)
    s = torch.ones(256, device=DEVICE)

    def call() -> None:
        with torch.no_grad(), torch.autocast(DEVICE.type, torch.bfloat16):
            model(x, s)

    rows = []
    for method, steps in SOLVERS:
        set_solver(model, method, steps)
        rows.append({"solver": method, "steps": steps, "trained_with": (method, steps) == trained,
                     "fd_heun35": fd_digits(samples(model, n_eval)), "latency_b256_s": seconds(call)})
    set_solver(model, *trained)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--train-batch", type=int, default=256, help="batch of the training-throughput measurement")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    result = {**provenance(DEVICE), "sigmas": SIGMAS, "models": {}}
    test = load_dataset("digits32", split="test").x.to(DEVICE)
    for item in args.model:
        name, _, file = item.partition("=")
        model = load_model(file, device=DEVICE)
        cfg = model.net_config
        prof = profile_net(cfg["arch"], 32, cfg["in_channels"], DEVICE, (1, 256), bf16=True, net_options=options(cfg))
        entry = {"file": file, "net_config": cfg, "parameters": prof["parameters"],
                 "flops_per_call": count_flops(cfg, 1), "latency_s": prof["latency_s"],
                 "train_s_per_kimg": train_s_per_kimg(model, args.train_batch),
                 "sample_heun35_s": {str(b): sampling_seconds(model, b) for b in (1, 256)},
                 "denoise_psnr_db": psnr_vs_sigma(model, test)}
        if any(isinstance(m, ODEBlock) for m in model.modules()):
            entry["solver_ablation"] = solver_ablation(model, args.n_eval)
        result["models"][name] = entry
        print(name, {k: v for k, v in entry.items() if k != "net_config"}, flush=True)
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
