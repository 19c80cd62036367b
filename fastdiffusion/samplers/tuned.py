"""The ``tuned`` schedule: per-sampler noise levels optimised offline on exact-score Gaussian mixtures.

**Representation.** A grid of ``n`` levels from sigma_max down to sigma_min is stored by its interior positions in log
sigma, ``t_i = (ln sigma_i - ln sigma_min) / (ln sigma_max - ln sigma_min)``, strictly decreasing in (0, 1); the end
points t_0 = 1 and t_{n-1} = 0 are implied. ``TUNED_T[sampler][n]`` holds the ``n - 2`` interior values.

**Other sigma ranges.** The tables were tuned on EDM's range [0.002, 80] (``TUNED_RANGE``). For any other
(sigma_min, sigma_max) the same t_i are used, i.e. the tuned grid is mapped affinely in log sigma:
``sigma_i = sigma_min (sigma_max / sigma_min)^{t_i}``. This keeps the relative spacing in log-SNR, the variable the
samplers' step sizes live in; on [0.002, 80] it reproduces the tuned grid exactly.

**Fallbacks.** A sampler without a table (or ``sampler=None``, e.g. a caller that does not know it) uses the table of
``DEFAULT_SAMPLER``. A level count without a table is resampled from the sampler's largest table of at most that many
levels (the smallest table when below every table): the stored points are read as a curve t(s) on s = i/(m-1),
piecewise linear, and evaluated at s = j/(n-1); a decreasing curve gives a decreasing grid. Two levels are just
[sigma_max, sigma_min].

**Tuning protocol** (``python -m fastdiffusion.bench.samplers --tune-schedule``; details in
``fastdiffusion.bench.samplers`` and ``benchmarks/samplers/schedule_tuning.json``): for each sampler and NFE = n the
``n - 2`` interior levels minimise the geometric mean endpoint error over the benchmark's four separate tuning
mixtures (never the benchmark problems), parameterised as softmax increments of ln sigma (each at least 1% of
ln(sigma_max/sigma_min)) so every candidate is a valid decreasing grid; Powell then Nelder-Mead from the best of
karras (rho 3, 5, 7, 10) and logsnr, float64, fixed seeds. ``lambda-ddim`` was tuned at its default (per-NFE tuned)
lambda.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TUNED_RANGE = (0.002, 80.0)
DEFAULT_SAMPLER = "ipndm"

# Interior log-sigma positions t_i per sampler and number of levels (= NFE for these one-call samplers), written by
#   python -m fastdiffusion.bench.samplers --tune-schedule --out benchmarks/samplers
# (every objective value: benchmarks/samplers/schedule_tuning.json).
TUNED_T: dict[str, dict[int, tuple[float, ...]]] = {
    "ipndm": {
        3: (0.601578,),
        4: (0.65369, 0.439443),
        5: (0.712823, 0.576111, 0.39331),
        6: (0.835385, 0.692409, 0.527417, 0.377455),
        7: (0.917835, 0.720198, 0.619874, 0.497868, 0.362933),
        8: (0.884145, 0.722757, 0.619359, 0.550146, 0.470773, 0.349024),
        9: (0.897206, 0.753915, 0.676815, 0.583984, 0.513564, 0.430374, 0.31375),
        10: (0.932743, 0.758348, 0.683849, 0.605567, 0.551478, 0.494365, 0.418033, 0.307103),
    },
    "lambda-ddim": {
        3: (0.668463,),
        4: (0.777322, 0.549885),
        5: (0.828659, 0.660664, 0.496784),
        6: (0.853956, 0.722582, 0.594869, 0.466562),
        7: (0.870532, 0.755941, 0.64866, 0.55902, 0.444605),
        8: (0.872407, 0.753899, 0.658926, 0.564833, 0.439859, 0.070767),
        9: (0.891117, 0.801601, 0.710158, 0.647217, 0.589555, 0.502911, 0.413208),
        10: (0.883374, 0.826992, 0.746526, 0.680416, 0.628003, 0.557825, 0.488123, 0.399607),
    },
    "dpmpp-2m": {
        3: (0.611544,),
        4: (0.640591, 0.407621),
        5: (0.696302, 0.509105, 0.372348),
        6: (0.720381, 0.55826, 0.435959, 0.341856),
        7: (0.860957, 0.702398, 0.549819, 0.433277, 0.344662),
        8: (0.738128, 0.618775, 0.52542, 0.43781, 0.330607, 0.320607),
        9: (0.900955, 0.720018, 0.605487, 0.51511, 0.429417, 0.324435, 0.314435),
        10: (0.883006, 0.722328, 0.637383, 0.559374, 0.483531, 0.414684, 0.319377, 0.309377),
    },
}


def _table(sampler: str | None) -> dict[int, tuple[float, ...]]:
    """The sampler's tables, or ``DEFAULT_SAMPLER``'s when it has none."""
    return TUNED_T.get(sampler or DEFAULT_SAMPLER) or TUNED_T[DEFAULT_SAMPLER]


def tuned_positions(n: int, sampler: str | None = None) -> list[float]:
    """All ``n`` positions ``[1, t_1, ..., t_{n-2}, 0]`` for ``sampler`` (module docstring: tables and fallbacks)."""
    if n == 2:
        return [1.0, 0.0]
    table = _table(sampler)
    if n in table:
        return [1.0, *table[n], 0.0]
    below = [m for m in table if m <= n]
    m = max(below) if below else min(table)
    return resample([1.0, *table[m], 0.0], n)


def resample(points: list[float], n: int) -> list[float]:
    """``points`` read as a piecewise-linear curve on s = i/(m-1), evaluated at s = j/(n-1), j = 0..n-1."""
    m = len(points)
    out = []
    for j in range(n):
        s = j * (m - 1) / (n - 1)
        i = min(int(s), m - 2)
        out.append(points[i] + (s - i) * (points[i + 1] - points[i]))
    return out


def tuned(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, sampler: str | None = None) -> Tensor:
    """``sigma_i = sigma_min (sigma_max/sigma_min)^{t_i}`` with the tuned ``t_i`` of ``sampler`` (``rho`` is unused:
    it is in the signature every schedule shares)."""
    ratio = math.log(sigma_max / sigma_min)
    t = torch.tensor(tuned_positions(n, sampler), dtype=torch.float64)
    sigmas = sigma_min * torch.exp(ratio * t)
    sigmas[0] = sigma_max  # exactly, not up to the rounding of exp(ln(sigma_max/sigma_min))
    return sigmas
