"""Datasets: bundled sets (digits, 2-D toys, exact Gaussian mixtures) and image folder / zip / npz readers.

`load_dataset(spec)` is the one entry point; it returns a `Dataset` that reads its samples on demand (`samples`:
uint8 images (C, H, W), memory-mapped or decoded from files as needed, or float32 points (D,)) with their class labels
if the data has them, and whose `x` is all of it in float32: images scaled to [-1, 1] by x = u8 / 127.5 − 1,
points as (N, D).

Specs:
    digits, digits16, digits32  scikit-learn's 8×8 digits at 8, 16 or 32 px (1797 images, 10 classes, 80/20 split)
    moons, swissroll, gmm       2-D toys, 20 000 points (gmm: 8 Gaussians on a ring, exact score in `.gmm`)
    gmm64                       a fixed 64-D, 16-component mixture (`GaussianMixture.benchmark64`)
    PATH                        a folder of images, a .zip of images, or a .npz/.npy array
                                ('file.npz:KEY' picks an array by name)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.data.images import (
    SPLITS,
    ImageFiles,
    digit_labels,
    load_digits,
    load_folder,
    load_npz,
    load_zip,
    open_files,
    open_npz,
    split_indices,
)
from fastdiffusion.data.labels import Labels
from fastdiffusion.data.samples import ArraySamples, Fetched, read_all, uint8_to_float
from fastdiffusion.data.toys import TOYS
from fastdiffusion.errors import UserError

__all__ = [
    "DIGITS_SETS",
    "Dataset",
    "Fetched",
    "GaussianMixture",
    "Labels",
    "BUNDLED",
    "load_dataset",
    "random_hflip",
    "load_digits",
    "load_folder",
    "load_zip",
    "load_npz",
    "split_indices",
    "uint8_to_float",
]

DEFAULT_POINTS = 20_000
"""Points drawn for a generated (toy or GMM) dataset unless `n_points` says otherwise."""

_TEST_SEED_OFFSET = 1_000_003
_DIGITS = {"digits": None, "digits16": 16, "digits32": 32}
DIGITS_SETS = tuple(_DIGITS)
BUNDLED = (*_DIGITS, *TOYS, "gmm64")
"""Names `load_dataset` accepts besides paths."""


@dataclass(eq=False)
class Dataset:
    """A dataset whose samples are read on demand.

    Attributes:
        samples: per-sample access (`samples.ArraySamples` or `images.ImageFiles`, or a `Subset` of one for a split)
            whose `__getitems__(indices)` returns a batch as stored: uint8 images or float32 points.
        kind: 'image' or 'points'.
        name: the spec it was loaded from (a bundled name or the path).
        shape: per-sample shape: (C, H, W) for images, (D,) for points.
        labels: the class of every sample with the class count and names, or None for unlabelled data.
        storage: where the samples live: 'in memory', 'memory-mapped' or 'image files'.
        gmm: the exact distribution for GMM specs (exact scores and log-likelihoods), else None.
    """

    samples: TorchDataset
    kind: Literal["image", "points"]
    name: str
    shape: tuple[int, ...]
    labels: Labels | None = None
    storage: str = "in memory"
    gmm: GaussianMixture | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @cached_property
    def x(self) -> Tensor:
        """Every sample in float32: images (N, C, H, W) in [-1, 1], points (N, D)."""
        x = read_all(self.samples).x
        return uint8_to_float(x) if x.dtype == torch.uint8 else x

    @property
    def nbytes(self) -> int:
        """Size of the samples as stored (uint8 images, float32 points)."""
        return len(self) * int(np.prod(self.shape)) * (1 if self.kind == "image" else 4)

    def describe(self) -> str:
        """'1,437 images 1x16x16 (0.4 MB uint8, in memory; 10 classes)' and the like."""
        what = "images" if self.kind == "image" else "points"
        dtype = "uint8" if self.kind == "image" else "float32"
        classes = f"; {self.labels.num_classes} classes" if self.labels is not None else ""
        return (f"{len(self):,} {what} {'x'.join(map(str, self.shape))} ({self.nbytes / 1e6:.1f} MB {dtype}, "
                f"{self.storage}{classes})")


def _images(u8: np.ndarray, name: str, labels: Labels | None = None) -> Dataset:
    samples = ArraySamples(u8, labels)
    return Dataset(samples, "image", name, samples.shape, labels)


def _points(x: Tensor, name: str, gmm: GaussianMixture | None = None) -> Dataset:
    return Dataset(ArraySamples(x.numpy()), "points", name, tuple(x.shape[1:]), gmm=gmm)


def _points_seed(seed: int, split: str) -> int:
    """Generated sets are infinite: 'test' is an independent draw (another seed); 'all' = 'train'."""
    return seed + _TEST_SEED_OFFSET if split == "test" else seed


def path_and_key(spec: str) -> tuple[Path, str | None]:
    """The existing file or folder a path spec names, and the array key of a 'file.npz:KEY' spec."""
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
    return path, key


def _load_path(spec: str, resolution: int | None, split: str) -> Dataset:
    path, key = path_and_key(spec)
    suffix = path.suffix.lower()
    samples: ArraySamples | ImageFiles
    if path.is_dir() or suffix == ".zip":
        samples, storage = open_files(path), "image files"
    elif suffix in (".npz", ".npy"):
        samples = open_npz(path, key)
        storage = "in memory" if samples.mapping is None and not isinstance(samples.array, np.memmap) \
            else "memory-mapped"
    else:
        raise UserError(
            f"{path}: unsupported dataset file; use a folder of images, a .zip, or a .npz/.npy array"
        )
    if resolution is not None:
        _, h, w = samples.shape
        if h != w:
            raise UserError(
                f"{path}: images are {w}x{h} (WxH), not square; resolution={resolution} would distort them: "
                f"crop them square or leave the resolution unset"
            )
        samples.size = (resolution, resolution)
    rows = split_indices(len(samples), split)
    labels = None if samples.labels is None else samples.labels.subset(rows)
    name = str(path) if key is None else f"{path}:{key}"
    shape = samples.shape
    subset = samples if split == "all" else Subset(samples, rows)
    return Dataset(subset, "image", name, shape, labels, storage)


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
            interpolation as they are read and must then be square); for `digits` it picks the size (default 8).
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
        labels = Labels(digit_labels(split), 10, [str(k) for k in range(10)])
        return _images(load_digits(res, split), name if fixed or res == 8 else f"digits{res}", labels)
    if name in TOYS or name == "gmm64":
        if resolution is not None:
            raise UserError(f"dataset {name!r} is a set of points; resolution applies only to image datasets")
        if not isinstance(n_points, int) or n_points < 1:
            raise UserError(f"dataset {name!r}: n_points must be a positive integer, got {n_points!r}")
        s = _points_seed(seed, split)
        if name == "gmm64":
            mix = GaussianMixture.benchmark64()
            return _points(mix.sample(n_points, torch.Generator().manual_seed(s), dtype=torch.float32), name, mix)
        return _points(TOYS[name](n_points, s), name, GaussianMixture.ring2d() if name == "gmm" else None)
    return _load_path(spec, resolution, split)


def random_hflip(x: Tensor, generator: torch.Generator, rows: slice = slice(None), batch: int | None = None
                 ) -> Tensor:
    """Mirror each image of an (N, C, H, W) batch along the width axis independently with probability ½.

    The flip mask is drawn on `generator`'s device (one uniform per image of the whole `batch`, default N, of which
    x holds `rows`: every rank of a multi-GPU step draws the same mask) and moved to x's device; no host sync.
    This is the `--xflip` augmentation.
    """
    if x.ndim != 4:
        raise UserError(f"horizontal flips need an image batch (N, C, H, W), got shape {tuple(x.shape)}")
    mask = torch.rand(batch or x.shape[0], generator=generator, device=generator.device)[rows] < 0.5
    mask = mask.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)
