"""The counted run: a sampler driven with exactly the number of network calls (NFE) it reports, the last included."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..processes import Process
from .registry import Callback, Noise, SamplerSpec


class CountedModel:
    """``model(x, sigma)`` with sigma passed per row in x's dtype (the EDM / k-diffusion convention), the output cast
    to x's dtype, and every call counted. ``process`` is what PSLD samplers ask for coefficients."""

    def __init__(self, model: Callable, process: Process | None = None, progress: tqdm | None = None) -> None:
        self.model, self.process, self.progress = model, process, progress
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        self.calls += 1
        if self.progress is not None:
            self.progress.update(1)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return self.model(x, sigma).to(x.dtype)


def run_counted(spec: SamplerSpec, model: CountedModel, x: Tensor, sigmas: Tensor, nfe: int, *,
                noise: Noise | None = None, callback: Callback = None, differentiable: bool = False,
                **hyper: object) -> Tensor:
    """``spec.fn(model, x, sigmas, ...)`` with the spec's default hyperparameters under ``hyper``, without autograd
    unless ``differentiable``; raises unless the run made exactly ``nfe`` calls of ``model``."""
    start = model.calls
    with torch.set_grad_enabled(differentiable):
        out = spec.fn(model, x, sigmas, noise=noise, callback=callback, **{**spec.hyper, **hyper})
    if model.calls - start != nfe:
        raise RuntimeError(f"sampler '{spec.name}' made {model.calls - start} network calls, not the {nfe} it reports")
    return out
