"""Issue 19 on one GPU: an imported NVlabs/edm CIFAR-10 DDPM++ snapshot (55.7M parameters, EDM's pickle layout,
random weights) against the same network converted to this project's file.

Measures the load time of the snapshot and of the converted file (3 cold loads each, to the GPU), checks the two
agree on the same input, then the sampling fast path (bf16, channels_last, compile with CUDA graphs) of each at batch
1024: image-calls/s of one network call, median of timed windows.

    PYTHONPATH=$PWD:$PWD/tests python benchmarks/importers/gpu.py --out importers.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from edm_reference import edm_layout, random_tensors, write_snapshot

import fastdiffusion as fd
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.timing import timed_windows
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.cli import main as cli

CIFAR10 = dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=[2, 2, 2],
               num_blocks=4, attn_resolutions=[16], dropout=0.13, augment_dim=9, embedding_type="positional",
               channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])


def load_seconds(path: Path, device: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = fd.load_model(path, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del model
    return min(times)


def rate(path: Path, batch: int, device: str) -> float:
    model = fd.accelerate(fd.load_model(path, device=device), device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    sigma = torch.full((batch,), 1.0, device=device)

    @torch.no_grad()
    def call() -> None:
        model(x, sigma)

    return batch / timed_windows(call, torch.device(device), warmup=5, window=20, repeats=5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    dev = args.device
    tmp = Path(tempfile.mkdtemp())
    layout = edm_layout("SongUNet", CIFAR10)
    snapshot = tmp / "network-snapshot.pkl"
    write_snapshot(snapshot, "EDMPrecond", {"sigma_min": 0.0, "sigma_max": float("inf"), "sigma_data": 0.5,
                                            "use_fp16": False, "label_dim": 0, "img_resolution": 32,
                                            "img_channels": 3}, "SongUNet", CIFAR10, random_tensors(layout),
                   tmp / "never-written")
    converted = tmp / "converted.safetensors"
    assert cli(["convert", str(snapshot), str(converted)]) == 0
    result = {"snapshot_mb": snapshot.stat().st_size / 2**20, "load_s": {}, "img_calls_per_s": {}}
    for name, path in (("snapshot", snapshot), ("converted", converted)):
        result["load_s"][name] = load_seconds(path, dev)
    a, b = fd.load_model(snapshot, device=dev), fd.load_model(converted, device=dev)
    x = torch.randn(8, 3, 32, 32, device=dev)
    sigma = torch.full((8,), 2.0, device=dev)
    with torch.no_grad():
        result["max_abs_diff"] = float((a(x, sigma) - b(x, sigma)).abs().max())
    del a, b
    for name, path in (("native", converted), ("imported", snapshot)):
        result["img_calls_per_s"][name] = rate(path, args.batch, dev)
        atomic_write_json(args.out, {**provenance(dev), **result})
    result["imported_over_native"] = result["img_calls_per_s"]["imported"] / result["img_calls_per_s"]["native"]
    atomic_write_json(args.out, {**provenance(dev), **result})
    print(result)


if __name__ == "__main__":
    main()
