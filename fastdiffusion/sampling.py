"""``fastdiffusion.sample``: the one entry point from noise to data for any model and any sampler."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import UserError
from .guidance import ClassSpec, classes_for_seeds, evaluations_per_call, guided_model, model_label_dim
from .models import ProcessModel
from .processes import EDM, Process
from .samplers import SAMPLERS, SamplerSpec, get_sampler, make_sigmas
from .samplers.counted import CountedModel, run_counted

# (sampler, NFE) used when the caller names none: EDM's Heun at 18 steps, PSLD's SSCS baseline, DSNO's one call.
FAMILY_DEFAULTS = {"edm": ("heun", 35), "psld": ("sscs", 100), "dsno": ("dsno", 1)}


def model_process(model: Callable, process: Process | None = None) -> Process:
    """A ``ProcessModel``'s process; for a bare callable ``process``, by default EDM's (a ``D(x, sigma)``)."""
    if isinstance(model, ProcessModel):
        if process is not None:
            raise UserError("process= is for bare callables: this model brings its own process")
        return model.process
    return process or EDM()


def model_family(model: Callable, process: Process | None = None) -> str:
    """The sampler family a model needs: a ``ProcessModel``'s own ('edm', 'psld' or 'dsno'), else its process's."""
    return model.family if isinstance(model, ProcessModel) else model_process(model, process).family


def sampling_range(model: Callable, process: Process | None = None) -> tuple[float, float]:
    """A ``ProcessModel``'s own range, else its process's (EDM's [0.002, 80] by default)."""
    return model.sampling_range() if isinstance(model, ProcessModel) else model_process(model, process).sampling_range()


def resolve_sampler(model: Callable, sampler: str | None, nfe: int | None, process: Process | None = None
                    ) -> tuple[str, int]:
    """The model family's default sampler and NFE for whichever of the two is not given."""
    default_sampler, default_nfe = FAMILY_DEFAULTS[model_family(model, process)]
    if sampler is None:
        return default_sampler, default_nfe if nfe is None else nfe
    return sampler, FAMILY_DEFAULTS[get_sampler(sampler).family][1] if nfe is None else nfe


def check_sampler_args(sampler: str, nfe: int, hyper: dict) -> SamplerSpec:
    """The sampler's spec, after checking that it can make exactly ``nfe`` calls and takes every option in ``hyper``."""
    spec = get_sampler(sampler)
    if nfe < 1:
        raise UserError(f"--nfe must be >= 1, got {nfe}")
    spec.steps(nfe)
    unknown = set(hyper) - set(spec.hyper)
    if unknown:
        raise UserError(f"sampler '{sampler}' has no option {', '.join(sorted(unknown))}; it takes "
                        f"{', '.join(spec.hyper) or 'none'}")
    for key, value in hyper.items():  # every sampler option is a number (an integer where its default is one)
        kind = numbers.Integral if isinstance(spec.hyper[key], int) else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) and not (value is None and spec.hyper[key] is None):
            raise UserError(f"--opt {key}={value}: sampler '{sampler}' option {key} takes "
                            f"{'an integer' if kind is numbers.Integral else 'a number'} (default {spec.hyper[key]})")
    return spec


def check_grid(sigmas: Tensor | list[float], steps: int, what: str) -> Tensor:
    """``sigmas`` as float64, after checking it has ``steps + 1`` strictly decreasing levels ending in 0."""
    grid = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
    if len(grid) != steps + 1:
        raise UserError(f"{what} takes {steps + 1} noise levels (ending in 0), got {len(grid)}")
    if float(grid[-1]) != 0 or not bool((grid[:-1] > grid[1:]).all()):
        raise UserError(f"the noise levels for {what} must decrease strictly and end in 0")
    return grid


def sample(model: Callable, noise: Tensor, *, sampler: str | None = None, nfe: int | None = None,
           schedule: str | None = None,
           sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
           class_labels: Tensor | int | None = None, guidance: float | None = None,
           noise_fn: Callable[[Tensor], Tensor] | None = None,
           callback: Callable[[dict], None] | None = None, progress: bool = False, process: Process | None = None,
           sigmas: Tensor | None = None, **hyper: Any) -> Tensor:
    """Generate data from standard-normal ``noise`` with exactly ``nfe`` calls of ``model``.

    ``model`` is a ``ProcessModel`` (its process sets the sigma range, the prior and the sampler family) or any callable
    ``D(x, sigma[, labels])`` returning the denoised ``x_0`` estimate, sampled as an EDM-family model on EDM's range
    unless ``process`` names its process (e.g. a PSLD ``eps(z, t)`` function with its ``PSLD``). A PSLD model is
    sampled by a PSLD sampler in z = (x, m) from the PSLD prior and returns x; ``noise`` is its x half.
    A DSNO ``OneStepGenerator`` (family 'dsno') takes ``sampler='dsno', nfe=1``: one call maps the noise to its
    whole trajectory, the t = 0 image is returned and ``callback`` receives the M trajectory points.
    The state is kept in fp32 whatever precision the model runs in. ``noise_fn`` draws
    the fresh noise of stochastic samplers (pass ``SeededNoise(seeds)`` for per-image reproducibility).
    Without ``sampler``/``nfe`` the model family's defaults apply (``FAMILY_DEFAULTS``). ``sigmas`` (descending, ending
    in 0, e.g. from ``tune_schedule``) replaces the schedule.
    ``class_labels`` (integer classes (N,), one class for all, or one-hot rows (N, K)) with ``guidance`` W samples
    D_u + W (D_c - D_u) (``guidance.Guided``; W = 1 by default, the plain conditional model); ``nfe`` counts guided
    calls, each 2 network evaluations per sample when W != 1.
    """
    sampler, nfe = resolve_sampler(model, sampler, nfe, process)
    spec = check_sampler_args(sampler, nfe, hyper)
    family = model_family(model, process)
    if spec.family != family:
        names = ", ".join(sorted(n for n, s in SAMPLERS.items() if s.family == family))
        raise UserError(f"sampler '{sampler}' is a {spec.family} sampler and this is a {family} model: use one of "
                        f"{names}")
    lo, hi = sampling_range(model, process)
    if sigmas is None:
        sigmas = make_sigmas(schedule or spec.schedule, spec.steps(nfe), sigma_min or lo, sigma_max or hi, rho,
                             sampler=sampler)
    else:
        sigmas = check_grid(sigmas, spec.steps(nfe), f"{sampler} at NFE {nfe}")
    guided = guided_model(model, family, class_labels, guidance, noise.shape[0])
    evals = evaluations_per_call(None if class_labels is None else guidance)
    bar = tqdm(total=nfe, desc=f"{sampler} {nfe} NFE" + (f" ({evals}x network evaluations)" if evals > 1 else ""),
               disable=not progress, leave=False)
    process = model_process(model, process)
    den = CountedModel(guided, process, bar)
    x = process.prior(noise.float(), sigmas[0], noise_fn or torch.randn_like)
    x = run_counted(spec, den, x, sigmas.to(x.device), nfe, noise=noise_fn, callback=callback, **hyper)
    bar.close()
    return process.data_part(x)


def generate(model: Callable, seeds: list[int], *, data_shape: tuple[int, ...] | None = None, batch: int = 256,
             device: str | torch.device = "cpu", progress: bool = True, class_labels: ClassSpec = None,
             **sample_kwargs: Any) -> Tensor:
    """Samples for ``seeds`` in batches of ``batch``; image ``i`` depends only on ``seeds[i]``, never on the batching.

    ``class_labels``: a class K for every seed, 'random' (a class drawn from each seed alone) or one label per seed;
    ``guidance=W`` and the other keywords go to ``sample``.
    Under torchrun each rank generates ``seeds[rank::world]`` and the results are gathered in seed order.
    """
    import torch.distributed as dist

    from .seeds import SeededNoise
    from .training.distributed import rank_world

    shape = tuple(data_shape or (model.data_shape if isinstance(model, ProcessModel) else ()))
    if not shape:
        raise UserError("the model does not say its data shape: pass data_shape=(C, H, W)")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    labels = classes_for_seeds(class_labels, seeds, model_label_dim(model))
    rank, world = rank_world()
    mine = seeds[rank::world]
    mine_labels = None if labels is None else labels[rank::world]
    out = []
    for lo in tqdm(range(0, len(mine), batch), desc="generate", disable=not progress or rank != 0):
        noise = SeededNoise(mine[lo:lo + batch])
        chunk_labels = None if mine_labels is None else mine_labels[lo:lo + batch]
        out.append(sample(model, noise.randn(shape, device), noise_fn=noise, class_labels=chunk_labels,
                          **sample_kwargs).cpu())
    local = torch.cat(out) if out else torch.empty((0, *shape))
    if world == 1:
        return local
    parts: list[Tensor] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(parts, local)
    result = torch.empty((len(seeds), *shape))
    for r, part in enumerate(parts):
        result[r::world] = part
    return result
