"""Training batches: each step's global-batch example indices drawn on the host, this rank's rows of them assembled
by a torch DataLoader (in worker processes ahead of the step for image files), in pinned memory for a GPU.

The indices come from one CPU generator that every rank holds in the same state, so every rank draws the same global
batch and keeps its own rows: the examples of a step do not depend on the number of ranks or accumulation rounds.
A DataLoader with workers asks for index batches ahead of their step (``lookahead``); ``position()``, the generator
state before the oldest batch not yet used, is what a checkpoint stores, and ``restart(position)`` makes the next
``next()`` the batch that followed it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..errors import UserError
from .samples import Fetched

__all__ = ["BatchLoader", "IndexStream", "auto_workers"]

PREFETCH_FACTOR = 2  # index batches in flight per worker (the DataLoader's own default)


def auto_workers(world_size: int) -> int:
    """DataLoader workers per rank for image files: this process's CPUs shared by the ranks, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // max(world_size, 1)))


class IndexStream:
    """Endless global batches of ``batch`` indices uniform in range(n) from ``generator``; yields their ``rows``."""

    def __init__(self, n: int, batch: int, rows: slice, generator: torch.Generator) -> None:
        self.n, self.batch, self.rows, self.generator = n, batch, rows, generator
        self.pending: deque[Tensor] = deque()  # generator state before each batch drawn but not yet used

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            self.pending.append(self.generator.get_state())
            idx = torch.randint(self.n, (self.batch,), generator=self.generator, device=self.generator.device)
            yield idx[self.rows].tolist()

    def position(self) -> Tensor:
        """The generator state from which the next unused batch is drawn."""
        return self.pending[0] if self.pending else self.generator.get_state()


def _as_is(batch: Fetched) -> Fetched:
    """The DataLoader's collate function: ``__getitems__`` already returns the assembled batch."""
    return batch


class BatchLoader:
    """``next()``: this rank's rows of the next step's global batch, as stored (uint8 images), with their labels.

    ``workers`` = 0 gathers in the calling process when the step asks (the draw happens then, in the generator's
    stream order); more start a DataLoader with that many worker processes, each reading whole batches ahead.
    """

    def __init__(self, samples: TorchDataset, batch: int, rows: slice, generator: torch.Generator, *, workers: int,
                 pin_memory: bool) -> None:
        self.stream = IndexStream(len(samples), batch, rows, generator)
        # The DataLoader's own generator only seeds its workers (ours draw nothing); passing one keeps it from
        # drawing on the global RNG, the training's dropout stream.
        self.loader = DataLoader(samples, batch_sampler=self.stream, num_workers=workers, collate_fn=_as_is,
                                 pin_memory=pin_memory, prefetch_factor=PREFETCH_FACTOR if workers else None,
                                 generator=torch.Generator())
        self._batches: Iterator[Fetched] | None = None

    @property
    def lookahead(self) -> int:
        """Index batches drawn before the step that uses them."""
        return self.loader.num_workers * PREFETCH_FACTOR

    def next(self) -> Fetched:
        """The next batch; a data error met by a worker stops here with its one-line message."""
        if self._batches is None:
            self._batches = iter(self.loader)
        got = next(self._batches)
        self.stream.pending.popleft()
        if got.error is not None:
            raise UserError(got.error)
        return got

    def position(self) -> Tensor:
        return self.stream.position()

    def restart(self, position: Tensor | None = None) -> None:
        """Drop batches in flight; the next one is drawn from generator state ``position`` (default: the state the
        oldest unused batch was drawn from, so none is skipped)."""
        self.stream.generator.set_state(self.position() if position is None else position)
        self.close()

    def close(self) -> None:
        """Stop the worker processes (a new ``next()`` starts them again)."""
        self._batches = None  # the DataLoader iterator shuts its workers down when released
        self.stream.pending.clear()
