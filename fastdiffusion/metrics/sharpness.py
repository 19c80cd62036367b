"""High-frequency energy of images: the sharpness check that keeps a few-step sampler from winning FD by blur.

    HF(x) = mean over images, channels and pixels of (Δx)², Δ the 3×3 Laplacian [[0, 1, 0], [1, -4, 1], [0, 1, 0]]

at full resolution (no padding). A sampler counts as sharp against a reference when HF(x) / HF(x_ref) lies within a
tolerance of 1 (issue 20: 10%).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def hf_energy(x: Tensor) -> float:
    """Mean squared 3×3 Laplacian of images (N, C, H, W) at full resolution: their high-frequency energy."""
    if x.ndim != 4 or min(x.shape[-2:]) < 3:
        raise UserError(f"high-frequency energy needs images (N, C, H, W) of at least 3×3 pixels, not shape "
                        f"{tuple(x.shape)}")
    c = x.shape[1]
    kernel = LAPLACIAN.to(x.device, torch.float32).expand(c, 1, 3, 3)
    return float(F.conv2d(x.float(), kernel, groups=c).square().mean())


def outside_band(ratio: float, tolerance: float) -> float:
    """max(0, |ratio − 1| − tolerance): how far an HF ratio lies outside the band 1 ± tolerance (inf if not finite)."""
    return max(0.0, abs(ratio - 1) - tolerance) if math.isfinite(ratio) else math.inf
