"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² of two feature sets under the cubic
polynomial kernel, averaged over random subsets.

    k(x, y) = (xᵀy / d + 1)³                                   (d: the feature dimension)
    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (n(n−1)) − 2 Σ_{i,j} k(x_i, y_j) / (mn)

KID is the mean of MMD²_u over `subsets` pairs of subsets of `m = min(subset_size, N_gen, N_ref)` rows each, drawn
without replacement (defaults 100 and 1000, as in the paper and torch-fidelity), reported with the standard deviation
over the pairs. Pair s draws `randperm(N_gen)[:m]`, then `randperm(N_ref)[:m]`, from one CPU `torch.Generator`
seeded with `seed`, so the value is reproducible. Float64 throughout. Unlike FID it is unbiased in the sample count,
so values at different N compare; it can be slightly negative when the sets are alike.

It is computed on the same features as FID (Inception pool3, `fid.image_features`) and as FD-digits (the bundled
digits classifier, `kid-digits`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["KID_SUBSETS", "KID_SUBSET_SIZE", "kid", "mmd2_unbiased", "polynomial_kernel"]

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(x_i, y_j) = (x_iᵀ y_j / d + 1)³ for rows of x (m, d) and y (n, d): the (m, n) kernel matrix."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """MMD²_u of x (m, d) and y (n, d) under ``polynomial_kernel`` (module docstring), in float64."""
    x, y = x.double(), y.double()
    m, n = len(x), len(y)
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).sum() / (m * n))


def kid(features: Tensor, reference: Tensor, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> dict:
    """KID of generated `features` (N_gen, d) against `reference` features (N_ref, d): {'value' (the mean MMD²_u),
    'std', 'subsets', 'subset_size'}; computed on the features' device."""
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise UserError(f"KID: feature sets must be (N, d) with the same d, got {tuple(features.shape)} and "
                        f"{tuple(reference.shape)}")
    m = min(subset_size, len(features), len(reference))
    if m < 2 or subsets < 1:
        raise UserError(f"KID needs at least 2 generated and 2 reference samples and one subset, got "
                        f"{len(features)}, {len(reference)} and {subsets}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        i = torch.randperm(len(features), generator=generator)[:m].to(features.device)
        j = torch.randperm(len(reference), generator=generator)[:m].to(reference.device)
        values.append(mmd2_unbiased(features[i], reference[j].to(features.device)))
    v = torch.tensor(values, dtype=torch.float64)
    return {"value": float(v.mean()), "std": float(v.std(unbiased=False)), "subsets": subsets, "subset_size": m}
