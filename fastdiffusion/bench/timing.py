"""Device-side timing shared by the throughput benchmark, ``fastdiffusion info`` and the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timed_windows(fn: Callable[[], object], device: torch.device, warmup: int, window: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` windows of ``window`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(window):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000 / window)
        else:
            t0 = time.perf_counter()
            for _ in range(window):
                fn()
            times.append((time.perf_counter() - t0) / window)
    return statistics.median(times)
