"""Two-dimensional toy distributions: each is `(n, seed) -> Tensor (n, 2)`, float32, roughly unit std.

Normalisation constants are fixed (not estimated from the sample), so the distribution does not depend on n:

    moons       make_moons(noise=0.05), x' = (x − (0.5, 0.25)) / (0.87, 0.50)     per-axis std ≈ 1
    swiss_roll  make_swiss_roll(noise=0.5) on its (x, z) plane, x' = (x − (2.0, 0.2)) / 6.8   std ≈ 1
    gmm         `GaussianMixture.ring2d()`: 8 Gaussians (std 0.1) on a ring, per-axis variance exactly 1
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError

__all__ = ["moons", "swiss_roll", "gmm", "TOYS"]

_MOONS_CENTER = np.array([0.5, 0.25])
_MOONS_SCALE = np.array([0.87, 0.50])
_SWISS_CENTER = np.array([2.0, 0.2])
_SWISS_SCALE = 6.8


def _check_n(n: int, name: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise UserError(f"toy dataset {name!r}: number of points must be a positive integer, got {n!r}")


def moons(n: int, seed: int = 0) -> Tensor:
    """Two interleaving half circles (scikit-learn `make_moons`, noise 0.05), centred and scaled per axis."""
    _check_n(n, "moons")
    from sklearn.datasets import make_moons  # scikit-learn takes ~80 MB: imported by the sets that use it

    x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    return torch.from_numpy((x - _MOONS_CENTER) / _MOONS_SCALE).float()


def swiss_roll(n: int, seed: int = 0) -> Tensor:
    """A 2-D Swiss roll: scikit-learn `make_swiss_roll` (noise 0.5), keeping
    (x, z) = (t cos t, t sin t) + noise, t ~ U(1.5π, 4.5π); centred, scaled isotropically (keeps its shape).
    """
    _check_n(n, "swissroll")
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=0.5, random_state=seed)
    return torch.from_numpy((x[:, [0, 2]] - _SWISS_CENTER) / _SWISS_SCALE).float()


def gmm(n: int, seed: int = 0) -> Tensor:
    """Samples from `GaussianMixture.ring2d()` (8 equal Gaussians on a ring); its exact score is available."""
    _check_n(n, "gmm")
    return GaussianMixture.ring2d().sample(n, torch.Generator().manual_seed(seed), dtype=torch.float32)


TOYS = {"moons": moons, "swissroll": swiss_roll, "gmm": gmm}
"""The 2-D toys by their `load_dataset` spec name."""
