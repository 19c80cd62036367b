"""Do samples from the sampling fast path match an fp32 eager run on the same noise?

Loads one trained model twice, once on the default fast path (``fastpath.accelerate``: bf16 network, channels_last,
cuDNN autotuning, CUDA graphs) and once in fp32 eager mode with every switch off, draws the same seeds with the same
sampler through ``fastdiffusion.generate`` and reports the per-pixel differences (data range [-1, 1]), FD-digits of
both sample sets against the held-out digits, and the warm sampling time of each (a second pass, after compilation).

    python benchmarks/perf/fastpath_agreement.py --model edm.safetensors --out agreement.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.fastpath import accelerate, fast_path_of
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.models import load_model
from fastdiffusion.sampling import generate

EAGER_FP32 = {"precision": "fp32", "channels_last": False, "compile": False, "cudnn_benchmark": False}


def draw(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, float]:
    """Samples for seeds 0..n-1 and the seconds of a warm pass (the first pass compiles)."""
    kw = {"batch": args.batch, "device": device, "sampler": args.sampler, "nfe": args.nfe, "progress": False}
    seeds = list(range(args.n))
    with torch.no_grad():
        generate(model, seeds[: args.batch], **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        x = generate(model, seeds, **kw)
    return x, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--sampler", default="heun")
    p.add_argument("--nfe", type=int, default=35)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    runs = {}
    for name, switches in (("eager_fp32", EAGER_FP32), ("fast", {"compile": True})):
        model = accelerate(load_model(args.model, device=device), device, **switches)
        x, seconds = draw(model, args, device)
        runs[name] = {"switches": fast_path_of(model), "samples": x, "seconds": seconds}
    diff = (runs["fast"]["samples"] - runs["eager_fp32"]["samples"]).flatten(1)
    result = {
        **provenance(device), "model": args.model, "sampler": args.sampler, "nfe": args.nfe, "n": args.n,
        "batch": args.batch,
        "pixel_diff": {"rms": float(diff.square().mean().sqrt()), "max_abs": float(diff.abs().max()),
                       "p99_abs": float(diff.abs().quantile(0.99)),
                       "per_image_rms_max": float(diff.square().mean(1).sqrt().max())},
        "runs": {name: {"switches": r["switches"], "fd_digits": fd_digits(r["samples"]), "warm_seconds": r["seconds"]}
                 for name, r in runs.items()},
    }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
