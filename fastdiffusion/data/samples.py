"""Per-sample access for training: torch map-style datasets whose ``__getitems__`` returns a whole batch at once.

A DataLoader given a batch sampler calls ``__getitems__`` with one batch's indices (in a worker process or in the
main one), so a step's rows are gathered in one call. An error in the user's data comes back as a value
(``Fetched.error``) rather than an exception, so that the main process can stop with its one-line message instead of
the DataLoader's multi-line worker traceback.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from ..errors import UserError
from .labels import Labels

__all__ = ["ArraySamples", "Fetched", "label_batch", "read_all", "resize_uint8", "uint8_to_float"]


class Fetched(NamedTuple):
    """One batch of samples: ``x`` as stored (uint8 images (b, C, H, W) or float32 points (b, D)), their class labels
    (b,) int64 or None, and ``error``, the one-line message of a data error met while reading (then x is None)."""

    x: Tensor | None
    labels: Tensor | None = None
    error: str | None = None


def uint8_to_float(u8: Tensor) -> Tensor:
    """Images in [-1, 1]: x = u8 / 127.5 - 1 in float32 (on u8's device)."""
    return u8.float().div_(127.5).sub_(1.0)


def resize_uint8(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images to size = (H', W') with antialiased bilinear interpolation.

    Interpolation runs in float32 (torch `interpolate(mode='bilinear', antialias=True, align_corners=False)`),
    then values are rounded and clipped back to 0..255. A no-op when the size already matches.
    """
    if tuple(images.shape[2:]) == tuple(size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


def label_batch(labels: Labels | None, indices: Sequence[int]) -> Tensor | None:
    """The classes of samples ``indices`` as (b,) int64, or None for an unlabelled set."""
    return None if labels is None else torch.from_numpy(labels.values[np.asarray(indices, dtype=np.int64)])


class ArraySamples(TorchDataset):
    """Samples stored in one array, in memory or memory-mapped (``mapping``: its mmap): uint8 images (N, C, H, W) or
    float32 points (N, D), with their class labels if any; ``size`` resizes images as they are read."""

    def __init__(self, array: np.ndarray, labels: Labels | None = None, size: tuple[int, int] | None = None, *,
                 mapping: mmap.mmap | None = None) -> None:
        self.array, self.labels, self.size, self.mapping = array, labels, size, mapping

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape after resizing."""
        shape = tuple(self.array.shape[1:])
        return shape if self.size is None else (shape[0], *self.size)

    def __getitems__(self, indices: Sequence[int]) -> Fetched:
        idx = np.asarray(indices, dtype=np.int64)
        x = np.ascontiguousarray(self.array[idx])
        if self.mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            # The kernel maps whole page-cache folios (up to MBs) around each row read; left mapped, they would make
            # this process's resident size grow to the whole file. The pages stay in the page cache.
            self.mapping.madvise(mmap.MADV_DONTNEED)
        if self.size is not None:
            x = resize_uint8(x, self.size)
        return Fetched(torch.from_numpy(x), label_batch(self.labels, idx))

    def __getitem__(self, i: int) -> Tensor:
        return self.__getitems__([i]).x[0]


def read_all(samples: TorchDataset, chunk: int = 1024) -> Fetched:
    """Every sample of ``samples`` in order, in one ``Fetched`` (errors raised as UserError)."""
    xs, ys = [], []
    for lo in range(0, len(samples), chunk):
        got = samples.__getitems__(list(range(lo, min(lo + chunk, len(samples)))))
        if got.error is not None:
            raise UserError(got.error)
        xs.append(got.x)
        ys.append(got.labels)
    return Fetched(torch.cat(xs), None if ys[0] is None else torch.cat(ys))
