"""``fastdiffusion bench throughput``: training s/kimg, images/s, model-FLOP utilisation, peak memory and sampling
image-calls/s of a network preset, with each precision mode measured side by side in one process.

Timing: after warm-up, ``repeats`` windows of ``window`` steps each are timed with device-side events (CUDA) or
``perf_counter`` (CPU); the median window is reported. FLOPs are counted with ``torch.utils.flop_counter`` on one
forward (+ backward) pass, not estimated by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..training.config import TrainConfig
from ..training.loop import Trainer
from .provenance import provenance
from .timing import timed_windows

# Named switch sets, measured side by side: eager fp32, eager bf16 autocast, and the optimised default path.
MODES = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False},
    "fast": {"precision": "bf16", "channels_last": True, "compile": True},
}

# Dense bf16 tensor-core peaks (vendor figures, TFLOP/s) used as the MFU denominator.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def count_flops(trainer: Trainer, batch: int, backward: bool) -> float:
    """FLOPs per image of one denoiser forward (and backward) at ``batch``."""
    model = trainer.model
    x = torch.randn(batch, *trainer.data.shape, device=trainer.dist.device)
    sigma = torch.ones(batch, device=trainer.dist.device)
    with FlopCounterMode(display=False) as counter:
        out = model(x, sigma)
        if backward:
            out.square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def bench_mode(cfg: TrainConfig, *, warmup: int, window: int, repeats: int, sample_batch: int) -> dict:
    """One switch set: training step time and sampling throughput of a fresh ``Trainer``.

    Under torchrun every rank trains its share of the global batch (DDP) and samples its own ``sample_batch``;
    figures are aggregates over all GPUs (rank 0's timing; DDP steps are synchronous).
    """
    trainer = Trainer(cfg, quiet=True)
    dev, world = trainer.dist.device, trainer.dist.world_size
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step_s = timed_windows(trainer.train_step, dev, warmup, window, repeats)
    peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    train_flops = count_flops(trainer, min(cfg.batch, 64), backward=True)
    model = trainer.ema.model
    if trainer.compiled and dev.type == "cuda":
        model = torch.compile(model, mode="reduce-overhead")  # CUDA graphs: the sampling shapes are static
    x = torch.randn(max(sample_batch, 1), *trainer.data.shape, device=dev)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sigma = torch.full((max(sample_batch, 1),), 1.0, device=dev)

    @torch.no_grad()
    def call() -> None:
        with torch.autocast(dev.type, torch.bfloat16, enabled=trainer.bf16):
            model(x, sigma)

    call_s = timed_windows(call, dev, max(2, warmup // 2), window, repeats) if sample_batch else float("nan")
    fwd_flops = count_flops(trainer, 64, backward=False)
    peak = peak_tflops(dev)
    achieved = train_flops * cfg.batch / step_s
    trainer.close()
    return {
        "world_size": world,
        "per_gpu_batch": cfg.batch // world,
        "precision": "bf16" if trainer.bf16 else "fp32",
        "channels_last": trainer.channels_last,
        "compile": trainer.compiled,
        "train_s_per_kimg": step_s * 1000 / cfg.batch,
        "train_img_per_s": cfg.batch / step_s,
        "train_gflop_per_img": train_flops / 1e9,
        "train_tflops": achieved / 1e12,
        "mfu": achieved / (world * peak * 1e12) if peak else None,
        "peak_mem_gib": peak_mem,
        "sample_batch_per_gpu": sample_batch,
        "sample_img_calls_per_s": world * sample_batch / call_s,
        "forward_gflop_per_img": fwd_flops / 1e9,
    }


def run(net: str, data: str, batches: list[int], modes: list[str], *, warmup: int, window: int, repeats: int,
        sample_batch: int, device: str) -> dict:
    """Every (mode, per-GPU batch) pair in order, in this process; ratios against the first mode at each batch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            for mode in modes:
                if mode not in MODES:
                    raise SystemExit(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
                key = f"{mode}@{batch}"
                cfg = TrainConfig(run_dir=f"{tmp}/{key}", data=data, net=net, process="edm", batch=batch * world,
                                  device=device, steps=10**9, **MODES[mode])
                results[key] = bench_mode(cfg, warmup=warmup, window=window, repeats=repeats,
                                          sample_batch=sample_batch)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    ratios = {}
    for key, r in results.items():
        base = results[f"{modes[0]}@{key.split('@')[1]}"]
        ratios[key] = {"train_speedup": base["train_s_per_kimg"] / r["train_s_per_kimg"],
                       "sample_speedup": r["sample_img_calls_per_s"] / base["sample_img_calls_per_s"]}
    return {**provenance(device if device != "auto" else None), "net": net, "data": data, "world_size": world,
            "timing": {"warmup": warmup, "window": window, "repeats": repeats, "statistic": "median window"},
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "results": results, f"ratios_vs_{modes[0]}": ratios}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", default="ddpmpp-cifar10")
    p.add_argument("--data", default="digits32")
    p.add_argument("--batch", default="512", help="per-GPU batch, or a comma list to sweep")
    p.add_argument("--modes", default="fp32,bf16,fast", help=f"comma list of {', '.join(MODES)}, measured in order")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sample-batch", type=int, default=1024, help="per GPU; 0 skips the sampling measurement")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="write the results JSON here")


def main(args: argparse.Namespace) -> dict:
    batches = [int(b) for b in str(args.batch).split(",")]
    result = run(args.net, args.data, batches, args.modes.split(","), warmup=args.warmup, window=args.window,
                 repeats=args.repeats, sample_batch=args.sample_batch, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:
        return result
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from ..checkpoint import atomic_write_bytes

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (text + "\n").encode())
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fastdiffusion.bench.throughput", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
