"""Fidelity / diversity from k-NN manifolds, and a memorisation check from nearest-neighbour distances.

Real features R = {r_i} (N), generated F = {f_j} (M), Euclidean distance d, and NND_k(a; A) the distance from a
to its k-th nearest neighbour in A \\ {a} (k = 3 by default):

    precision = 1/M Σ_j 1[∃ i: d(f_j, r_i) ≤ NND_k(r_i; R)]             (Kynkäänniemi et al. 2019)
    recall    = 1/N Σ_i 1[∃ j: d(r_i, f_j) ≤ NND_k(f_j; F)]
    density   = 1/(kM) Σ_j Σ_i 1[d(f_j, r_i) ≤ NND_k(r_i; R)]          (Naeem et al. 2020)
    coverage  = 1/N Σ_i 1[min_j d(r_i, f_j) ≤ NND_k(r_i; R)]

Memorisation: with T the training set and H a held-out set from the same distribution,

    d_gen(j) = min_t d(f_j, t),   d_held(h) = min_t d(h, t),   τ = 5th percentile of d_held
    fraction_closer = 1/M Σ_j 1[d_gen(j) < τ]

A model that generalises gives fraction_closer ≈ 0.05 (its samples are as far from the training images as fresh
data is); copies of training images give ≈ 1. `flagged` is fraction_closer > `flag_fraction` (0.2 by default).
Medians of both distance sets are reported too. Distances are computed in float64 in row chunks on the inputs'
device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["knn_radii", "memorization", "nearest_distances", "prdc"]

_CHUNK = 1024


def _flat(x: Tensor, device: torch.device | None = None) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).to(device=device or x.device, dtype=torch.float64)


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a, b).clamp_min_(0.0)


def knn_radii(x: Tensor, k: int = 3) -> Tensor:
    """NND_k(x_i; X): distance from each row to its k-th nearest other row (self excluded), float64 (N,)."""
    a = _flat(x)
    if a.shape[0] <= k:
        raise UserError(f"k-NN radii with k={k} need more than {k} samples, got {a.shape[0]}")
    out = []
    for lo in range(0, a.shape[0], _CHUNK):
        d = _cdist(a[lo : lo + _CHUNK], a)
        rows = torch.arange(d.shape[0], device=d.device)
        d[rows, rows + lo] = float("inf")  # exclude self; duplicates elsewhere still count as distance 0
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def nearest_distances(x: Tensor, ref: Tensor) -> Tensor:
    """min_t d(x_j, t) over t in ref, for each row of x; float64 (M,)."""
    a, b = _flat(x), _flat(ref, x.device)
    return torch.cat([_cdist(a[lo : lo + _CHUNK], b).min(1).values for lo in range(0, a.shape[0], _CHUNK)])


def prdc(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` features (see the module docstring)."""
    r, f = _flat(real), _flat(fake, real.device)
    if r.shape[1] != f.shape[1]:
        raise UserError(f"PRDC: feature dimensions differ ({r.shape[1]} vs {f.shape[1]})")
    r_rad, f_rad = knn_radii(r, k), knn_radii(f, k)
    in_real = torch.zeros(f.shape[0], dtype=torch.bool, device=r.device)
    count = torch.zeros(f.shape[0], dtype=torch.float64, device=r.device)
    recalled = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    nearest_fake = torch.full((r.shape[0],), float("inf"), dtype=torch.float64, device=r.device)
    for lo in range(0, f.shape[0], _CHUNK):
        d = _cdist(f[lo : lo + _CHUNK], r)  # (m, N)
        inside = d <= r_rad.unsqueeze(0)
        in_real[lo : lo + _CHUNK] = inside.any(1)
        count[lo : lo + _CHUNK] = inside.sum(1)
        recalled |= (d <= f_rad[lo : lo + _CHUNK].unsqueeze(1)).any(0)
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(count.sum() / (k * f.shape[0])),
        "coverage": float((nearest_fake <= r_rad).double().mean()),
    }


def memorization(
    generated: Tensor, train: Tensor, heldout: Tensor, percentile: float = 5.0, flag_fraction: float = 0.2
) -> dict[str, float | bool]:
    """Nearest-neighbour distances to the training set: generated vs held-out (see the module docstring)."""
    if not 0 < percentile < 100:
        raise UserError(f"memorization: percentile must be in (0, 100), got {percentile}")
    d_gen = nearest_distances(generated, train)
    d_held = nearest_distances(heldout, train)
    tau = torch.quantile(d_held, percentile / 100.0)
    frac = float((d_gen < tau).double().mean())
    med_gen, med_held = float(d_gen.median()), float(d_held.median())
    return {
        "median_generated_to_train": med_gen,
        "median_heldout_to_train": med_held,
        "median_ratio": med_gen / med_held if med_held > 0 else float("nan"),
        "threshold": float(tau),
        "threshold_percentile": percentile,
        "fraction_closer": frac,
        "expected_fraction": percentile / 100.0,
        "flag_fraction": flag_fraction,
        "flagged": frac > flag_fraction,
    }
