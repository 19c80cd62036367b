"""Per-image random streams, so a seed list gives the same images on any batch size, device count or device."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import torch
from torch import Tensor

from .errors import UserError


class SeededNoise:
    """Image ``i`` draws only from ``torch.Generator().manual_seed(seeds[i])`` (on the CPU, so CUDA and CPU agree).

    Calling it with a tensor returns standard normals shaped and placed like it; each call advances every stream.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def randn(self, shape: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
              ) -> Tensor:
        """A (len(seeds), *shape) batch of standard normals."""
        draws = [torch.randn(tuple(shape), generator=g) for g in self.generators]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"batch of {like.shape[0]} but {len(self.generators)} seeds")
        return self.randn(like.shape[1:], like.device, like.dtype)


def parse_seeds(spec: str) -> list[int]:
    """'0-63' or '1,5,9' or '0-3,10' -> list of ints."""
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise UserError(f"bad --seeds '{spec}': use a range like 0-63 or a list like 1,5,9") from None
    if not seeds:
        raise UserError(f"bad --seeds '{spec}': it names no seed")
    return seeds


def seed_runs(seeds: Sequence[int]) -> list[list[int]]:
    """[0, 1, 2, 5] -> [[0, 2], [5, 5]]: inclusive runs of consecutive seeds, in order (lists, so JSON keeps them)."""
    runs = []
    for _, run in groupby(enumerate(int(s) for s in seeds), key=lambda p: p[1] - p[0]):
        members = [s for _, s in run]
        runs.append([members[0], members[-1]])
    return runs


def format_seeds(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8': the --seeds syntax, the inverse of ``parse_seeds``."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in seed_runs(seeds))
