"""A small CNN trained on the bundled digits' TRAIN split; its 64-d penultimate features define "FD on digits".

Network (input 1×32×32 in [−1, 1]):

    conv3×3(1→16) ReLU maxpool2 → conv3×3(16→32) ReLU maxpool2 → conv3×3(32→32) ReLU maxpool2   (32×4×4)
    → flatten → linear(512→64) = features h → ReLU → dropout → linear(64→10) = logits

Features are h, the 64-d input of the last ReLU. Images at any square size (8, 16, 32 px, ...) are mapped to what
the network saw in training: colour → mean over channels; values clamped to [−1, 1]; resized to 32×32 with the
bilinear (antialiased, align_corners=False) interpolation that made `digits32` from the 8×8 originals.

Weights ship in the package (`weights/digits_classifier.safetensors`, made by `scripts/train_digits_classifier.py`
with a fixed seed on CPU); their metadata records the test accuracy and the training recipe, and the file's sha256
is the feature network's hash in every protocol.

    FD_digits(samples) = FD( N(μ_s, Σ_s), N(μ_r, Σ_r) )   (see `frechet.py`)

with (μ_s, Σ_s) fitted to the samples' features and (μ_r, Σ_r) to the features of the reference images (by
default the held-out TEST split, 360 images).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import sha256
from ..errors import UserError
from .frechet import FeatureStats, GaussianStats

__all__ = [
    "FEATURE_DIM",
    "FEATURE_NETWORK",
    "WEIGHTS_PATH",
    "DigitsNet",
    "classifier_info",
    "classify_features",
    "digits_features",
    "digits_reference",
    "fd_digits",
    "load_classifier",
    "prepare_digits",
]

FEATURE_DIM = 64
FEATURE_NETWORK = "fastdiffusion-digits-cnn (64-d penultimate features)"
WEIGHTS_PATH = Path(__file__).parent / "weights" / "digits_classifier.safetensors"
RESOLUTION = 32


class DigitsNet(nn.Module):
    """The digits classifier (see the module docstring); `features(x)` gives h, `forward(x)` the 10 logits."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 16, feature_dim)
        self.fc2 = nn.Linear(feature_dim, 10)
        self.dropout = nn.Dropout(dropout)

    def features(self, x: Tensor) -> Tensor:
        """h = fc1(flatten(conv stack(x))) for x (N, 1, 32, 32) in [−1, 1]."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc1(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.features(x))))


def prepare_digits(x: Tensor) -> Tensor:
    """(N, C, H, W) images in [−1, 1] → (N, 1, 32, 32) float32: channel mean, clamp to [−1, 1], bilinear resize."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise UserError(f"digits features need images (N, 1 or 3, H, W) in [-1, 1], got {shape}")
    x = x.float()
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    x = x.clamp(-1.0, 1.0)
    if tuple(x.shape[2:]) != (RESOLUTION, RESOLUTION):
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
    return x


@lru_cache(maxsize=1)
def classifier_info() -> dict:
    """Metadata of the shipped weights (test accuracy, recipe) plus the file's sha256 and path."""
    if not WEIGHTS_PATH.is_file():
        raise UserError(
            f"{WEIGHTS_PATH}: the digits classifier weights are missing from the installation; "
            f"recreate them with `python scripts/train_digits_classifier.py`"
        )
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        raw = f.metadata() or {}
    meta = json.loads(raw.get("fastdiffusion", "{}"))
    return {**meta, "sha256": sha256(WEIGHTS_PATH), "path": str(WEIGHTS_PATH)}


@lru_cache(maxsize=4)
def _classifier(device: str) -> DigitsNet:
    from safetensors.torch import load_file

    info = classifier_info()
    net = DigitsNet(**info.get("arch", {}))
    net.load_state_dict(load_file(str(WEIGHTS_PATH)))
    return net.to(device).eval().requires_grad_(False)


def load_classifier(device: str | torch.device = "cpu") -> DigitsNet:
    """The shipped classifier in eval mode on `device` (cached per device)."""
    return _classifier(str(torch.device(device)))


def digits_features(x: Tensor, batch: int = 500, device: str | torch.device | None = None) -> Tensor:
    """64-d features h of images x (N, C, H, W) in [−1, 1], as float32 on the CPU; computed in batches on `device`
    (default: x's device)."""
    dev = torch.device(device) if device is not None else x.device
    net = load_classifier(dev)
    out = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch):
            out.append(net.features(prepare_digits(x[lo : lo + batch].to(dev))).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


def classify_features(h: Tensor, device: str | torch.device | None = None) -> Tensor:
    """The classifier's predicted classes argmax fc2(ReLU(h)) (N,) int64 on the CPU, from features h (N, 64)."""
    dev = torch.device(device) if device is not None else h.device
    with torch.no_grad():
        return load_classifier(dev).fc2(F.relu(h.to(dev))).argmax(1).cpu()


@lru_cache(maxsize=8)
def _reference_features(split: str, resolution: int) -> Tensor:
    from ..data import load_dataset

    return digits_features(load_dataset("digits", resolution=resolution, split=split).x)


def digits_reference(split: str = "test", resolution: int = RESOLUTION) -> Tensor:
    """Features of the bundled digits' `split` ('train' 1437, 'test' 360 or 'all' 1797 images) rendered at
    `resolution` px (default 32, the classifier's own), cached."""
    return _reference_features(split, resolution)


def fd_digits(
    samples: Tensor,
    reference: str | Tensor = "test",
    batch: int = 500,
    device: str | torch.device | None = None,
) -> float:
    """FD between the classifier features of `samples` and of `reference` (a digits split name, rendered at the
    samples' resolution as `eval`'s `digits16@test` is, or images).

    `samples` and `reference` images: (N, C, H, W) in [−1, 1] at any size. At least 2 images each.
    """
    ref = (digits_reference(reference, samples.shape[-1]) if isinstance(reference, str)
           else digits_features(reference, batch, device))
    fs = FeatureStats(FEATURE_DIM).update(digits_features(samples, batch, device))
    fr = FeatureStats(FEATURE_DIM).update(ref)
    return fs.stats().frechet_distance(fr.stats())


def gaussian_of(features: Tensor) -> GaussianStats:
    """`GaussianStats` fitted to a feature matrix (N, D)."""
    return FeatureStats(features.shape[1]).update(features).stats()
