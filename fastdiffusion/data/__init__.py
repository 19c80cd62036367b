"""Datasets: bundled sets (digits, 2-D toys, exact Gaussian mixtures) and image folder / zip / npz readers.

`load_dataset(spec)` is the one entry point; it returns a `Dataset` whose `x` is float32:
images as (N, C, H, W) scaled to [-1, 1] by x = u8 / 127.5 − 1, points as (N, D).

Specs:
    digits, digits16, digits32  scikit-learn's 8×8 digits at 8, 16 or 32 px (1797 images, 80/20 split)
    moons, swissroll, gmm       2-D toys, 20 000 points (gmm: 8 Gaussians on a ring, exact score in `.gmm`)
    gmm64                       a fixed 64-D, 16-component mixture (`GaussianMixture.benchmark64`)
    PATH                        a folder of images, a .zip of images, or a .npz/.npy array
                                ('file.npz:KEY' picks an array by name)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.data.images import (
    SPLITS,
    load_digits,
    load_folder,
    load_npz,
    load_zip,
    resize_uint8,
    split_indices,
)
from fastdiffusion.data.toys import TOYS
from fastdiffusion.errors import UserError

__all__ = [
    "Dataset",
    "GaussianMixture",
    "BUNDLED",
    "load_dataset",
    "random_hflip",
    "load_digits",
    "load_folder",
    "load_zip",
    "load_npz",
    "split_indices",
]

DEFAULT_POINTS = 20_000
"""Points drawn for a generated (toy or GMM) dataset unless `n_points` says otherwise."""

_TEST_SEED_OFFSET = 1_000_003
_DIGITS = {"digits": None, "digits16": 16, "digits32": 32}
BUNDLED = (*_DIGITS, *TOYS, "gmm64")
"""Names `load_dataset` accepts besides paths."""


@dataclass(eq=False)
class Dataset:
    """An in-memory dataset.

    Attributes:
        x: float32 samples; images (N, C, H, W) in [-1, 1], points (N, D).
        kind: 'image' or 'points'.
        name: the spec it was loaded from (a bundled name or the path).
        gmm: the exact distribution for GMM specs (exact scores and log-likelihoods), else None.
    """

    x: Tensor
    kind: Literal["image", "points"]
    name: str
    gmm: GaussianMixture | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape: (C, H, W) for images, (D,) for points."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _images(u8: np.ndarray, name: str) -> Dataset:
    x = torch.from_numpy(np.ascontiguousarray(u8)).float().div_(127.5).sub_(1.0)
    return Dataset(x=x, kind="image", name=name)


def _points_seed(seed: int, split: str) -> int:
    """Generated sets are infinite: 'test' is an independent draw (another seed); 'all' = 'train'."""
    return seed + _TEST_SEED_OFFSET if split == "test" else seed


def _load_path(spec: str, resolution: int | None, split: str) -> Dataset:
    path, key = Path(spec).expanduser(), None
    lower = spec.lower()
    if not path.exists() and ".npz:" in lower:
        cut = lower.rindex(".npz:") + len(".npz")
        path, key = Path(spec[:cut]).expanduser(), spec[cut + 1 :] or None
    if not path.exists():
        raise UserError(
            f"{spec}: no such file or directory, and not a bundled dataset "
            f"(valid names: {', '.join(BUNDLED)})"
        )
    suffix = path.suffix.lower()
    if path.is_dir():
        u8 = load_folder(path)
    elif suffix == ".zip":
        u8 = load_zip(path)
    elif suffix in (".npz", ".npy"):
        u8 = load_npz(path, key)
    else:
        raise UserError(
            f"{path}: unsupported dataset file; use a folder of images, a .zip, or a .npz/.npy array"
        )
    if resolution is not None:
        h, w = u8.shape[2:]
        if h != w:
            raise UserError(
                f"{path}: images are {w}x{h} (WxH), not square; resolution={resolution} would distort them: "
                f"crop them square or leave the resolution unset"
            )
        u8 = resize_uint8(u8, (resolution, resolution))
    u8 = u8[split_indices(len(u8), split)]
    return _images(u8, str(path) if key is None else f"{path}:{key}")


def load_dataset(
    spec: str,
    resolution: int | None = None,
    split: str = "all",
    *,
    n_points: int = DEFAULT_POINTS,
    seed: int = 0,
) -> Dataset:
    """Load a bundled dataset by name or an image dataset from a path (see the module docstring for specs).

    Args:
        spec: a bundled name (`BUNDLED`) or a path to a folder, .zip, .npz or .npy.
        resolution: square output size for images (files are resized with antialiased bilinear
            interpolation and must then be square); for `digits` it picks the size (default 8).
            Not allowed for point datasets.
        split: 'all', 'train' or 'test'. Images: a fixed seeded 80/20 partition (stratified by class for
            digits).
            Generated points: 'test' is an independent draw with another seed; 'train' equals 'all'.
        n_points: number of points for generated datasets.
        seed: seed for generated datasets.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise UserError(f"resolution must be a positive integer, got {resolution!r}")
    name = spec.strip().lower()
    if name in _DIGITS:
        fixed = _DIGITS[name]
        if fixed is not None and resolution is not None and resolution != fixed:
            raise UserError(
                f"dataset {name!r} is {fixed}x{fixed}; use 'digits' with resolution={resolution} instead"
            )
        res = fixed or resolution or 8
        return _images(load_digits(res, split), name if fixed or res == 8 else f"digits{res}")
    if name in TOYS or name == "gmm64":
        if resolution is not None:
            raise UserError(f"dataset {name!r} is a set of points; resolution applies only to image datasets")
        if not isinstance(n_points, int) or n_points < 1:
            raise UserError(f"dataset {name!r}: n_points must be a positive integer, got {n_points!r}")
        s = _points_seed(seed, split)
        if name == "gmm64":
            mix = GaussianMixture.benchmark64()
            x = mix.sample(n_points, torch.Generator().manual_seed(s), dtype=torch.float32)
            return Dataset(x=x, kind="points", name=name, gmm=mix)
        x = TOYS[name](n_points, s)
        return Dataset(x=x, kind="points", name=name, gmm=GaussianMixture.ring2d() if name == "gmm" else None)
    return _load_path(spec, resolution, split)


def random_hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of an (N, C, H, W) batch along the width axis independently with probability ½.

    The flip mask is drawn on `generator`'s device (one uniform per image) and moved to x's device;
    no host sync.
    This is the `--xflip` augmentation.
    """
    if x.ndim != 4:
        raise UserError(f"horizontal flips need an image batch (N, C, H, W), got shape {tuple(x.shape)}")
    mask = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    mask = mask.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)
