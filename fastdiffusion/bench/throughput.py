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
import re
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from ..cli_args import parse_kv
from ..errors import UserError
from ..fastpath import accelerate
from ..training.config import TrainConfig
from ..training.loop import Trainer
from .provenance import provenance
from .timing import timed_windows

# Named switch sets, measured side by side: eager fp32 and eager bf16 autocast with no other switch, and the
# optimised default path. A mode may override any training-config field: "fast+cudnn_benchmark=false" is the fast
# path with one switch off (values are JSON).
MODES = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False, "cudnn_benchmark": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False, "cudnn_benchmark": False},
    "fast": {"precision": "bf16", "channels_last": True, "compile": True, "cudnn_benchmark": True},
}


def mode_switches(mode: str) -> dict:
    """The config fields of ``name[+field=value...]``."""
    name, *overrides = re.split(r"\+(?=[A-Za-z_]\w*=)", mode)  # a "+" inside a value (1e+3) does not split
    if name not in MODES:
        raise UserError(f"unknown mode {name!r}: choose from {', '.join(MODES)} (optionally +field=value)")
    out = {**MODES[name], **parse_kv(overrides, f"mode {mode}")}
    unknown = set(out) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise UserError(f"mode {mode}: {', '.join(sorted(unknown))} is not a training-config field")
    return out

# Dense bf16 tensor-core peaks (vendor figures, TFLOP/s) used as the MFU denominator.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def count_flops(trainer: Trainer, batch: int, backward: bool) -> float:
    """FLOPs per image of one denoiser forward (and backward) at ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode  # here: every CLI start imports this module's arguments

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
    fast = trainer.fast  # sampling runs the EMA model exactly as `fastdiffusion sample` does: fp32 in and out
    model = accelerate(trainer.ema.model, dev, precision="bf16" if fast.bf16 else "fp32",
                       channels_last=fast.channels_last, compile=fast.compile, cudnn_benchmark=fast.cudnn_benchmark,
                       compile_options=cfg.compile_options)
    x = torch.randn(max(sample_batch, 1), *trainer.data.shape, device=dev)
    sigma = torch.full((max(sample_batch, 1),), 1.0, device=dev)

    @torch.no_grad()
    def call() -> None:
        model(x, sigma)

    call_s = timed_windows(call, dev, max(2, warmup // 2), window, repeats) if sample_batch else float("nan")
    fwd_flops = count_flops(trainer, 64, backward=False)
    peak = peak_tflops(dev)
    achieved = train_flops * cfg.batch / step_s
    trainer.close()
    return {
        "world_size": world,
        "per_gpu_batch": cfg.batch // world,
        **fast.describe(),
        "compile_options": cfg.compile_options,
        "ddp_bucket_mb": cfg.ddp_bucket_mb,
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
        sample_batch: int, device: str, on_result: Callable[[dict], None] | None = None) -> dict:
    """Every (mode, per-GPU batch) pair in order, in this process; ratios against the first mode at each batch.
    ``on_result(partial)`` is called after each pair with the results so far (a long sweep keeps what it measured)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            for mode in modes:
                key = f"{mode}@{batch}"
                cfg = TrainConfig(run_dir=f"{tmp}/run{len(results)}", data=data, net=net, process="edm",
                                  batch=batch * world, device=device, steps=10**9, **mode_switches(mode))
                results[key] = bench_mode(cfg, warmup=warmup, window=window, repeats=repeats,
                                          sample_batch=sample_batch)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if on_result is not None:
                    on_result(_report(results, modes[0], net, data, world, device, (warmup, window, repeats)))
    return _report(results, modes[0], net, data, world, device, (warmup, window, repeats))


def _report(results: dict, base_mode: str, net: str, data: str, world: int, device: str,
            timing: tuple[int, int, int]) -> dict:
    ratios = {}
    for key, r in results.items():
        base = results.get(f"{base_mode}@{key.rsplit('@', 1)[1]}")
        if base is not None:
            ratios[key] = {"train_speedup": base["train_s_per_kimg"] / r["train_s_per_kimg"],
                           "sample_speedup": r["sample_img_calls_per_s"] / base["sample_img_calls_per_s"]}
    warmup, window, repeats = timing
    return {**provenance(device if device != "auto" else None), "net": net, "data": data, "world_size": world,
            "timing": {"warmup": warmup, "window": window, "repeats": repeats, "statistic": "median window"},
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit,  # algorithms tried per shape; 0: all
            "results": results, f"ratios_vs_{base_mode}": ratios}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", default="ddpmpp-cifar10")
    p.add_argument("--data", default="digits32")
    p.add_argument("--batch", default="512", help="per-GPU batch, or a comma list to sweep")
    p.add_argument("--modes", default="fp32,bf16,fast",
                   help=f"comma list of {', '.join(MODES)}, each optionally +field=value, measured in order")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sample-batch", type=int, default=1024, help="per GPU; 0 skips the sampling measurement")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="write the results JSON here")


def main(args: argparse.Namespace) -> dict:
    main_rank = int(os.environ.get("RANK", "0")) == 0

    def write(result: dict) -> None:
        if main_rank and args.out:
            from ..checkpoint import atomic_write_bytes

            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())

    batches = [int(b) for b in str(args.batch).split(",")]
    modes = re.split(r",(?![^{]*})", args.modes)  # commas inside a JSON {...} value do not separate modes
    result = run(args.net, args.data, batches, modes, warmup=args.warmup, window=args.window,
                 repeats=args.repeats, sample_batch=args.sample_batch, device=args.device, on_result=write)
    if main_rank:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fastdiffusion.bench.throughput", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
