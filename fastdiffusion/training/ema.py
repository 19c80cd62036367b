"""Exponential moving average of weights with a half-life in images (EDM's ``ema_halflife_kimg`` + ramp-up)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch: int, images_seen: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """beta = 0.5^(batch / h), h = halflife_kimg * 1000, capped at ``rampup_ratio * images_seen`` during ramp-up."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    return 0.5 ** (batch / max(halflife, 1e-8))


class EMA:
    """Holds a frozen copy of ``model`` and moves it towards ``model`` after every optimiser step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - beta)
