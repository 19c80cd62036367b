"""The data pipeline's figures (issue 18), on whatever machine runs it (CUDA if present):

  startup     training on a 200k x 3x32x32 uint8 .npz (made here, uncompressed, 614 MB) in a fresh process: peak
              resident memory (and its anonymous / file-backed parts) and the seconds from launch to the first
              logged step; the same with a 1,797-image .npz of that shape, so the difference is what the data size
              costs. Targets: <= 1.5 GB and <= 10 s on CPU.
  loader      the loader alone (``data.loader.BatchLoader`` with its default workers) reading 32-px RGB images from
              a PNG zip written by ``fastdiffusion dataset``, batches moved to the device: images/s. Target on the
              GPU machine: >= 6,000 images/s (2x the fast path's training rate).
  train       steady training rate from that zip against the same images held in memory (an .npz read whole),
              same network and batch: img/s and their ratio. Target on the GPU machine: within 5 %.
  gpu_memory  (CUDA only) peak GPU memory of EDM's CIFAR-10 network at batch 512 with 1,797 and 200,000 training
              images. Target: the same.

    python benchmarks/data/loader_bench.py --out benchmarks/data/loader_cpu.json
    python benchmarks/data/loader_bench.py --out benchmarks/data/loader_gpu.json            # the GPU machine
    python benchmarks/data/loader_bench.py --parts startup --src /tmp/old --out old.json   # another checkout's code

The data sets are generated in a temporary folder (``--tmp``) and deleted afterwards; nothing large is committed.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data import load_dataset
from fastdiffusion.data.dataset_zip import write_dataset_zip
from fastdiffusion.data.loader import BatchLoader, auto_workers
from fastdiffusion.training.config import TrainConfig
from fastdiffusion.training.loop import Trainer

PARTS = ("startup", "loader", "train", "gpu_memory")
SMALL = 1797  # the bundled digits' size: the "small data set" of the memory comparisons


def images(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 3x32x32 images with some structure (8x8 noise upsampled, plus fine noise), so PNGs compress about as
    much as natural 32-px images do."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, 32, 32), np.uint8)
    for lo in range(0, n, 10_000):
        m = min(10_000, n - lo)
        coarse = torch.from_numpy(rng.integers(0, 256, (m, 3, 8, 8)).astype(np.float32))
        smooth = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
        fine = torch.from_numpy(rng.normal(0, 6, (m, 3, 32, 32)).astype(np.float32))
        out[lo:lo + m] = (smooth + fine).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def watch(pid: int, log: Path, out: dict) -> None:
    """Poll a child until it exits: its peak resident memory (VmHWM, the kernel's high-water mark of this program's
    own memory; ``ru_maxrss`` would carry over the launching process's, which exec keeps), the peaks of its anonymous
    and file-backed parts, and when its first log row appears."""
    start = time.perf_counter()
    peaks = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "RssAnon" not in fields:  # a zombie: exited
            break
        for key in peaks:
            peaks[key] = max(peaks[key], int(fields[key].split()[0]))
        if "first_step_s" not in out and log.is_file() and log.stat().st_size:
            out["first_step_s"] = time.perf_counter() - start
        time.sleep(0.02)
    out["peak_rss_mb"] = peaks["VmHWM"] / 1024
    out["peak_rss_anon_mb"], out["peak_rss_file_mb"] = peaks["RssAnon"] / 1024, peaks["RssFile"] / 1024


def startup_run(data: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """One `fastdiffusion train` process on ``data``: peak resident memory and seconds to the first step."""
    cmd = [sys.executable, "-m", "fastdiffusion.cli", "train", "--data", str(data), "--run-dir", str(run_dir),
           "--steps", str(args.startup_steps), "--ckpt-every", str(args.startup_steps), "--log-every", "1",
           "--grid-images", "4", "--grid-nfe", "1", "--device", args.device, "--quiet"]
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    t0 = time.perf_counter()
    # Run from the data's folder: `python -m` puts the working directory first on the module path.
    proc = subprocess.Popen(cmd, env=env, cwd=data.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict = {}
    watcher = threading.Thread(target=watch, args=(proc.pid, run_dir / "log.jsonl", seen))
    watcher.start()
    _, err = proc.communicate()
    total = time.perf_counter() - t0
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"training on {data} failed: {err.decode()[-2000:]}")
    return {"data": data.name, "steps": args.startup_steps, **seen, "total_s": total}


def part_startup(tmp: Path, args: argparse.Namespace) -> dict:
    big = tmp / "big.npz"
    np.savez(big, images=images(args.big_images))
    small = tmp / "small.npz"
    np.savez(small, images=images(SMALL, seed=1))
    out = {"command": "fastdiffusion train --data X.npz (defaults: ddpmpp-tiny, batch 64)",
           "big": startup_run(big, tmp / "run-big", args), "small": startup_run(small, tmp / "run-small", args)}
    out["rss_cost_of_data_mb"] = out["big"]["peak_rss_mb"] - out["small"]["peak_rss_mb"]
    big.unlink()
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part_loader(zip_path: Path, device: torch.device, args: argparse.Namespace) -> dict:
    data = load_dataset(str(zip_path))
    workers = auto_workers(1)
    loader = BatchLoader(data.samples, args.batch, slice(None), torch.Generator().manual_seed(0), workers=workers,
                         pin_memory=device.type == "cuda")
    for _ in range(args.warmup):
        loader.next().x.to(device, non_blocking=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.loader_batches):
        loader.next().x.to(device, non_blocking=True)
    sync(device)
    seconds = time.perf_counter() - t0
    loader.close()
    return {"images": len(data), "zip_mb": zip_path.stat().st_size / 1e6, "workers": workers, "batch": args.batch,
            "batches": args.loader_batches, "img_per_s": args.loader_batches * args.batch / seconds}


def train_rate(data: Path, run_dir: Path, args: argparse.Namespace, **kw) -> dict:
    cfg = TrainConfig(run_dir=str(run_dir), data=str(data), net=args.net, batch=args.batch, steps=10**9,
                      ckpt_every=10**9, log_every=10**9, device=args.device, **kw)
    trainer = Trainer(cfg, quiet=True)
    dev = trainer.dist.device
    try:
        for _ in range(args.warmup):
            trainer.train_step()
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            trainer.train_step()
        sync(dev)
        seconds = time.perf_counter() - t0
        return {"data": f"{trainer.data.name} ({trainer.data.storage})", "img_per_s": args.train_steps * args.batch
                / seconds, "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda"
                else None, **trainer.fast.describe()}
    finally:
        trainer.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def part_train(zip_path: Path, memory_npz: Path, tmp: Path, args: argparse.Namespace) -> dict:
    memory = train_rate(memory_npz, tmp / "run-memory", args)
    stream = train_rate(zip_path, tmp / "run-zip", args)
    return {"net": args.net, "batch": args.batch, "steps_timed": args.train_steps, "memory": memory, "zip": stream,
            "zip_over_memory": stream["img_per_s"] / memory["img_per_s"]}


def part_gpu_memory(tmp: Path, args: argparse.Namespace) -> dict:
    out = {"net": "ddpmpp-cifar10", "batch": 512, "compile": False}
    for n in (SMALL, 200_000):
        path = tmp / f"mem-{n}.npz"
        np.savez(path, images=images(n, seed=2))
        steps = argparse.Namespace(**{**vars(args), "net": "ddpmpp-cifar10", "batch": 512, "warmup": 2,
                                      "train_steps": 3})
        out[str(n)] = train_rate(path, tmp / f"run-mem-{n}", steps, process="edm", compile=False)["peak_gpu_mem_gib"]
        path.unlink()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS[:3]) + (["gpu_memory"] if cuda else []))
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--big-images", type=int, default=200_000)
    p.add_argument("--startup-steps", type=int, default=2)
    p.add_argument("--zip-images", type=int, default=50_000 if cuda else 10_000)
    p.add_argument("--net", default="ddpmpp-small" if cuda else "ddpmpp-tiny")
    p.add_argument("--batch", type=int, default=512 if cuda else 64)
    p.add_argument("--warmup", type=int, default=20 if cuda else 3)
    p.add_argument("--train-steps", type=int, default=100 if cuda else 10)
    p.add_argument("--loader-batches", type=int, default=100 if cuda else 50)
    p.add_argument("--src", help="run the startup part with the fastdiffusion package of this source tree")
    p.add_argument("--tmp", help="folder for the generated data (default: the system's temporary folder)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    result: dict = {**provenance(device), "cpus": len(os.sched_getaffinity(0)),
                    "startup_code": str(Path(args.src).resolve()) if args.src else "this checkout"}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_dir:
        tmp = Path(tmp_dir)
        if "startup" in args.parts:
            result["startup"] = part_startup(tmp, args)
            print("startup", result["startup"], flush=True)
        if {"loader", "train"} & set(args.parts):
            x = images(args.zip_images, seed=3)
            memory_npz = tmp / "memory.npz"
            np.savez_compressed(memory_npz, images=x)  # deflated: read whole into memory
            np.savez(tmp / "zip-src.npz", images=x)
            zip_path = tmp / "images.zip"
            write_dataset_zip(str(tmp / "zip-src.npz"), zip_path, progress=False)
            if "loader" in args.parts:
                result["loader"] = part_loader(zip_path, device, args)
                print("loader", result["loader"], flush=True)
            if "train" in args.parts:
                result["train"] = part_train(zip_path, memory_npz, tmp, args)
                print("train", result["train"], flush=True)
        if "gpu_memory" in args.parts:
            result["gpu_memory"] = part_gpu_memory(tmp, args)
            print("gpu_memory", result["gpu_memory"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
