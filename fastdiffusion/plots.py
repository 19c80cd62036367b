"""Pictures people would rather look at than read: sample grids, 2-D scatter plots, loss curves. Atomic writes."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .checkpoint import atomic_write_bytes


def to_uint8(x: Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(x: Tensor, cols: int | None = None, pad: int = 1) -> Image.Image:
    """Tile a batch of [-1, 1] images into one picture, ``cols`` per row (default: square)."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(imgs):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
    pic = Image.fromarray(grid[..., 0] if c == 1 else grid)
    # Small images (8-32 px) are unreadable at 1:1: upscale without smoothing.
    scale = max(1, 256 // max(h, w))
    return pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)


def _png_bytes(pic: Image.Image) -> bytes:
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()


def figure(**kw):
    """``plt.subplots(**kw)`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kw)


def save_figure(fig, path: str | Path) -> None:
    """Write ``fig`` as a PNG atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def save_samples(x: Tensor, path: str | Path, reference: Tensor | None = None) -> None:
    """Images -> PNG grid; points (N, 2) -> scatter plot over ``reference`` points if given."""
    if x.ndim == 4:
        atomic_write_bytes(Path(path), _png_bytes(image_grid(x)))
        return
    fig, ax = figure(figsize=(5, 5))
    if reference is not None:
        r = reference[:, :2].cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, label="data", color="tab:gray")
    p = x[:, :2].detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.6, label="samples", color="tab:blue")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def plot_loss(log_path: str | Path, path: str | Path) -> None:
    """Training loss (log scale) against training images from a run's JSONL log."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = figure(figsize=(6, 3.5))
    kimg = [r["kimg"] for r in rows]
    loss = [r["loss"] for r in rows]
    ax.plot(kimg, loss, lw=0.8, alpha=0.5, label="loss")
    k = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    ax.plot(kimg[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("training images (k)")
    ax.set_ylabel("weighted denoising loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
