"""Train the digits classifier whose features define FD on the bundled digits (fastdiffusion.metrics.digits_classifier).

Reproducible recipe, CPU, about a minute on one core:
    data      bundled digits, TRAIN split only (1437 images), 32×32 (bilinear from sklearn's 8×8), [−1, 1]
    augment   random affine per image: rotation U(±10°), scale U(0.9, 1.1), shift U(±2 px); background stays −1
    optimiser AdamW(lr 2e-3, weight decay 1e-4), cosine decay to 0, batch 64, 40 epochs, dropout 0.3
    seed      0 for weights, dropout, shuffling and augmentation; 1 thread; deterministic algorithms

Writes safetensors weights atomically with metadata: test accuracy (held-out TEST split, 360 images, also at 8 and
16 px inputs), train accuracy, recipe, torch version. Usage:

    python scripts/train_digits_classifier.py [--out PATH] [--seed 0] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from fastdiffusion.data import load_dataset
from fastdiffusion.data.images import split_indices
from fastdiffusion.metrics.digits_classifier import WEIGHTS_PATH, DigitsNet, prepare_digits

ARCH = {"width": 16, "feature_dim": 64, "dropout": 0.3}


def digit_labels(split: str) -> Tensor:
    """Class labels of the bundled digits' `split`, in the order `load_dataset` returns the images."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    return torch.from_numpy(target[split_indices(len(target), split, labels=target)].astype(np.int64))


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random rotation (±10°), scale (0.9–1.1) and shift (±2 px) per image; the uncovered border is −1."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * 2 / x.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def accuracy(net: DigitsNet, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(prepare_digits(x[i : i + 500])).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())


def train(seed: int, epochs: int, batch: int = 64, lr: float = 2e-3) -> tuple[DigitsNet, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_dataset("digits32", split="train").x, digit_labels("train")
    net = DigitsNet(**ARCH)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(net(augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    y_test = digit_labels("test")
    meta = {
        "arch": ARCH,
        "test_accuracy": accuracy(net, load_dataset("digits32", split="test").x, y_test),
        "test_accuracy_by_input_resolution": {
            str(r): accuracy(net, load_dataset("digits", resolution=r, split="test").x, y_test) for r in (8, 16, 32)
        },
        "train_accuracy": accuracy(net, x, y),
        "trained_on": "bundled digits TRAIN split (1437 images) at 32 px; tested on the TEST split (360 images)",
        "recipe": {"seed": seed, "epochs": epochs, "batch": batch, "optimizer": "AdamW", "lr": lr,
                   "weight_decay": 1e-4, "schedule": "cosine", "augment": "affine rot 10deg, scale 0.9-1.1, shift 2px",
                   "threads": torch.get_num_threads()},
        "features": "64-d fc1 output (input of the last ReLU)",
        "torch": torch.__version__,
    }
    return net.eval(), meta


def save(net: DigitsNet, meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"fastdiffusion": json.dumps(meta, sort_keys=True),
                                          "test_accuracy": f"{meta['test_accuracy']:.4f}"})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    net, meta = train(args.seed, args.epochs)
    meta["train_seconds"] = round(time.perf_counter() - start, 1)
    meta["command"] = "python scripts/train_digits_classifier.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save(net, meta, args.out)
    print(json.dumps({k: meta[k] for k in ("test_accuracy", "test_accuracy_by_input_resolution", "train_accuracy",
                                           "train_seconds")}))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
