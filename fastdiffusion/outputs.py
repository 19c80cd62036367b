"""Writing generated samples: a PNG grid, a folder of PNGs (one per seed) or an ``.npz`` array; all atomic."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from .checkpoint import atomic_write_bytes
from .errors import UserError
from .plots import save_samples, to_uint8


def output_kind(out: str | Path) -> str:
    """'png', 'npz' or 'folder' by the name's suffix; any other suffix is a UserError (checked before sampling)."""
    suffix = Path(out).suffix
    if suffix in (".png", ".npz"):
        return suffix[1:]
    if suffix:
        raise UserError(f"--out {out}: use a .png grid, an .npz file or a folder name")
    return "folder"


def write_samples(x: Tensor, out: str | Path, seeds: Sequence[int]) -> Path:
    """``out`` ending in .png -> grid (or scatter plot for points); .npz -> array 'samples' (uint8 NHWC for images,
    float32 for points) plus 'seeds'; anything else -> a folder with one PNG per image named by its seed."""
    out = Path(out)
    kind = output_kind(out)
    if kind == "png":
        out.parent.mkdir(parents=True, exist_ok=True)
        save_samples(x, out)
    elif kind == "npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        arr = to_uint8(x) if x.ndim == 4 else x.detach().float().cpu().numpy()
        buf = io.BytesIO()
        np.savez(buf, samples=arr, seeds=np.asarray(seeds, dtype=np.int64))
        atomic_write_bytes(out, buf.getvalue())
    else:
        if x.ndim != 4:
            raise UserError(f"--out {out}: points cannot be written as image files; use .npz or .png")
        out.mkdir(parents=True, exist_ok=True)
        for seed, img in zip(seeds, to_uint8(x), strict=True):
            pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            atomic_write_bytes(out / f"{seed:06d}.png", buf.getvalue())
    return out
