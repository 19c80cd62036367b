"""Where the fast path spends GPU time: kernel-level profile of one training step and one sampling call.

Builds the training fast path for a network preset (default: EDM's CIFAR-10 DDPM++ at batch 512), warms it up,
records a few steps with ``torch.profiler``, then the same for the accelerated EMA model's sampling call. Reports the
top kernels and the time per kernel class (convolution / matmul / attention / Inductor-generated Triton / other)
per step, and where the copy kernels come from (the launching operator chain, shapes and Python frames), as JSON.

    python benchmarks/perf/profile_gpu.py --out profile.json
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.fastpath import accelerate
from fastdiffusion.training import TrainConfig, Trainer

CLASSES = [  # first match wins; kernel names of cuDNN / cuBLAS / CUTLASS / flash / Inductor
    ("attention", r"flash|fmha|attention"),
    ("convolution", r"conv|implicit|wgrad|dgrad|xmma_fprop|cudnn"),
    ("matmul", r"gemm|nvjet|cutlass|matmul"),
    ("triton (fused pointwise / norms)", r"^triton_"),
    ("optimizer / ema / foreach", r"foreach|adam|multi_tensor"),
]


def kernel_table(fn: Callable[[], object], steps: int) -> dict:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1000 / steps, e.count // steps) for e in prof.key_averages()
            if e.device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(ms for _, ms, _ in rows)
    classes: dict[str, float] = {}
    for name, ms, _ in rows:
        cls = next((c for c, pat in CLASSES if re.search(pat, name, re.IGNORECASE)), "other")
        classes[cls] = classes.get(cls, 0.0) + ms
    top = sorted(rows, key=lambda r: -r[1])[:30]
    return {"kernel_ms_per_step": total, "by_class_ms": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:160], "ms": ms, "calls": c} for n, ms, c in top]}


def _ancestry(event: object, ops: int = 3, frames: int = 4) -> tuple[str, str]:
    """The operator chain that launched a profiler event (innermost first) and the nearest Python frames above it
    outside torch (``file.py(line): function``, as the profiler names them with ``with_stack``)."""
    chain: list[str] = []
    stack: list[str] = []
    while event is not None and len(stack) < frames:
        name = event.name
        if ".py(" in name:
            if not (name.startswith("torch/") or "/torch/" in name):
                stack.append(name)
        elif len(chain) < ops and name.startswith("aten::"):  # not the runtime events a launch may sit under
            chain.append(name)
        event = event.cpu_parent
    return " <- ".join(chain), " | ".join(stack)


def copy_sources(fn: Callable[[], object], steps: int, frames: int = 4) -> list[dict]:
    """Device time per step of the ``copy`` kernels, grouped by the operator chain that launched them, its input
    shapes and the Python frames above it."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True,
                 with_stack=True) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    groups: dict[tuple, dict] = {}
    for e in prof.events():
        us = sum(k.duration for k in e.kernels if "copy" in k.name and not k.name.startswith("triton_"))
        if us == 0:
            continue
        chain, stack = _ancestry(e, frames=frames)
        key = (chain, str(e.input_shapes), stack)
        g = groups.setdefault(key, {"ops": key[0], "shapes": key[1], "frames": key[2], "ms": 0.0, "calls": 0})
        g["ms"] += us / 1000 / steps
        g["calls"] += 1
    for g in groups.values():
        g["calls"] //= steps
    return sorted(groups.values(), key=lambda g: -g["ms"])[:20]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="ddpmpp-cifar10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--sample-batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig(run_dir=tmp, data="digits32", net=args.net, process="edm", batch=args.batch,
                                      steps=10**9), quiet=True)
        for _ in range(8):
            trainer.train_step()
        result = {**provenance(), "net": args.net, "batch": args.batch, "fast_path": trainer.fast.describe(),
                  "train_step": kernel_table(trainer.train_step, args.steps),
                  "train_step_copies": copy_sources(trainer.train_step, args.steps)}
        # compile=True: the automatic rule would run a job of unknown length eagerly, not the path being profiled
        model = accelerate(trainer.ema.model, trainer.dist.device, compile=True)
        x = torch.randn(args.sample_batch, *trainer.data.shape, device=trainer.dist.device)
        sigma = torch.ones(args.sample_batch, device=trainer.dist.device)
        with torch.no_grad():
            for _ in range(5):
                model(x, sigma)
            result["sample_call"] = {"batch": args.sample_batch, "compiled": model.net.compiled,
                                     "cuda_graphs": model.net.graphs,
                                     **kernel_table(lambda: model(x, sigma), args.steps),
                                     "copies": copy_sources(lambda: model(x, sigma), args.steps)}
        trainer.close()
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
