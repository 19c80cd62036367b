"""Learned solver parameters: a DPM-Solver++ grid, its decoupled network levels (LD3, Tong et al. 2024, arXiv
2405.15506) and per-step scales of its higher-order terms, fitted together by gradient descent to the model's own
PF-ODE (docs/samplers.md, "Learned solver parameters").

Where ``tuning.fit_schedule`` moves the grid alone by Nelder-Mead, this differentiates the sampler's endpoints with
respect to 3 parameters per step: the grid's log-level decrements (``tuning.levels_from_logits``), the level the
network is asked at, ``sigma_i exp(s_i)``, and the factor 1 + c_i on the step's terms above first order. It starts
from the best of ``tuning.start_grids`` with s = c = 0 (the plain sampler) and keeps the best iterate on the tuning
noise. The fitted values travel as the sampler's per-step options ``call_sigmas`` and ``corrections``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import UserError
from ..processes import Process
from ..sampling import sample, sampling_range
from .registry import SAMPLERS, get_sampler
from .tuning import (
    Distance,
    Reference,
    TunedSchedule,
    endpoint_gap,
    levels_from_logits,
    logits_from_levels,
    prior_noise,
    reference_solve,
    start_grids,
    tunable_family,
)

PER_STEP = ("call_sigmas", "corrections")  # the per-step sampler options a learned fit sets
ITERATIONS = 300
LEARNING_RATE = 0.02  # Adam's, for the logits, the log level shifts s_i and the scales c_i alike


def learnable_samplers() -> list[str]:
    """The samplers whose per-step options a learned fit sets (``PER_STEP``)."""
    return sorted(name for name, spec in SAMPLERS.items() if set(PER_STEP) <= set(spec.per_step))


def learn_schedule(model: Callable, *, sampler: str, nfe: int, noise: Tensor, process: Process | None = None,
                   class_labels: Tensor | None = None, reference: Reference | None = None,
                   iterations: int = ITERATIONS, lr: float = LEARNING_RATE, distance: Distance = "rms",
                   progress: bool = False, **hyper: object) -> TunedSchedule:
    """Fit ``sampler``'s grid, ``call_sigmas`` and ``corrections`` at ``nfe`` calls to ``model`` from ``noise``: Adam on
    the ``endpoint_gap`` (``distance``) to ``reference`` (default: ``reference_solve``) for ``iterations`` runs; the
    best iterate. ``hyper``: the sampler's other options. Tuning calls are not the sampler's NFE; the model's weights
    are untouched."""
    if sampler not in learnable_samplers():
        raise UserError(f"tune --learn: '{sampler}' has no per-step parameters to learn; choose one of "
                        f"{', '.join(learnable_samplers())}")
    if iterations < 1:
        raise UserError(f"tune --learn: --iterations must be >= 1, got {iterations}")
    family = tunable_family(model, process)
    steps = get_sampler(sampler).steps(nfe)
    if steps < 2:
        raise UserError(f"tune --learn: {sampler} at NFE {nfe} has no interior level to learn; use NFE >= 2")
    lo, hi = sampling_range(model, process)
    ref = reference or reference_solve(model, noise, process=process, class_labels=class_labels)
    noise_fn = prior_noise(noise)

    def run(levels: Tensor, shifts: Tensor | None = None, scales: Tensor | None = None) -> Tensor:
        options = hyper if shifts is None else {**hyper, "call_sigmas": levels * torch.exp(shifts),
                                                  "corrections": scales}
        out = sample(model, noise, sampler=sampler, nfe=nfe, sigmas=torch.cat([levels, levels.new_zeros(1)]),
                     process=process, class_labels=class_labels, noise_fn=noise_fn,
                     differentiable=shifts is not None, **options)
        return endpoint_gap(out, ref.endpoint, distance)

    starts = start_grids(ref, family, steps, lo, hi)
    start_values = {name: float(run(levels)) for name, levels in starts.items()}
    start = min(start_values, key=start_values.__getitem__)
    logits = torch.tensor(logits_from_levels(starts[start], lo, hi), requires_grad=True)
    shifts = torch.zeros(steps, dtype=torch.float64, requires_grad=True)
    scales = torch.zeros(steps, dtype=torch.float64, requires_grad=True)
    params = (logits, shifts, scales)
    opt = torch.optim.Adam(params, lr=lr)
    best = (start_values[start], [p.detach().clone() for p in params])
    for _ in tqdm(range(iterations), desc=f"learn {sampler} {nfe} NFE", disable=not progress, leave=False):
        with torch.enable_grad():  # callers sample under no_grad
            loss = run(levels_from_logits(logits, lo, hi), shifts, scales)
            value = float(loss.detach())
            if not math.isfinite(value):  # a diverging step: back to the best iterate, Adam's moments kept
                with torch.no_grad():
                    for p, b in zip(params, best[1], strict=True):
                        p.copy_(b)
                continue
            if value < best[0]:
                best = (value, [p.detach().clone() for p in params])
            # gradients of these parameters alone: the network's weights get none
            for p, g in zip(params, torch.autograd.grad(loss, params, materialize_grads=True), strict=True):
                p.grad = g
        opt.step()
    z, s, c = best[1]
    levels = levels_from_logits(z, lo, hi)
    learned = {} if not (s.any() or c.any()) else {"call_sigmas": (levels * torch.exp(s)).tolist(),
                                                    "corrections": c.tolist()}
    return TunedSchedule(torch.cat([levels, levels.new_zeros(1)]), learned, best[0], start, start_values,
                         len(starts) + iterations)

