"""``fastdiffusion.sample``: the one entry point from noise to data for any model and any sampler."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import UserError
from .fastpath import show_compiling
from .guidance import (
    ClassSpec,
    Interval,
    classes_for_seeds,
    guidance_protocol,
    guided_model,
    model_label_dim,
    network_evaluations,
)
from .models import ProcessModel
from .processes import EDM, Process
from .processes.gaussian_data import GaussianDataStats
from .samplers import SAMPLERS, SamplerSpec, get_sampler, make_sigmas
from .samplers.counted import CountedModel, run_counted

# (sampler, NFE) used when the caller names none: EDM's Heun at 18 steps, PSLD's SSCS baseline, DSNO's one call.
FAMILY_DEFAULTS = {"edm": ("heun", 35), "psld": ("sscs", 100), "dsno": ("dsno", 1)}
GAUSSIAN_FAMILIES = ("edm", "psld")  # the families whose process knows Gaussian data's model and flow (teleport, afs)


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


def check_sampler_args(sampler: str, nfe: int, hyper: dict, afs: bool = False) -> SamplerSpec:
    """The sampler's spec, after checking that it can make exactly ``nfe`` network calls (``nfe + 1`` denoiser calls
    with ``afs``, the first analytic) and takes every option in ``hyper``."""
    spec = get_sampler(sampler)
    if nfe < 1:
        raise UserError(f"--nfe must be >= 1, got {nfe}")
    if afs:
        def valid(n: int) -> bool:
            try:
                return n >= 1 and spec.steps(n + 1) > 0
            except UserError:
                return False

        if not valid(nfe):
            near = " or ".join(str(n) for n in (nfe - 1, nfe + 1) if valid(n))
            raise UserError(f"--afs runs {sampler} on a grid of NFE + 1 = {nfe + 1} denoiser calls (the first one "
                            f"analytic), which {sampler} cannot make" + (f": use --nfe {near}" if near else ""))
    steps = spec.steps(nfe + 1 if afs else nfe)
    unknown = set(hyper) - set(spec.hyper)
    if unknown:
        raise UserError(f"sampler '{sampler}' has no option {', '.join(sorted(unknown))}; it takes "
                        f"{', '.join(spec.hyper) or 'none'}")
    for key, value in hyper.items():  # a number (an integer where its default is one), or one per step
        if key in spec.per_step:
            if value is not None and not _per_step_values(value, steps):
                raise UserError(f"sampler '{sampler}' option {key} takes {steps} finite numbers at NFE {nfe}, one "
                                f"per step (from `fastdiffusion tune --learn`)")
            continue
        kind = numbers.Integral if isinstance(spec.hyper[key], int) else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) and not (value is None and spec.hyper[key] is None):
            raise UserError(f"--opt {key}={value}: sampler '{sampler}' option {key} takes "
                            f"{'an integer' if kind is numbers.Integral else 'a number'} (default {spec.hyper[key]})")
    return spec


def _per_step_values(value: object, steps: int) -> bool:
    """Whether ``value`` is a sequence (or tensor) of ``steps`` finite numbers."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return False
    return len(t) == steps and bool(t.isfinite().all())


def check_grid(sigmas: Tensor | list[float], steps: int, what: str) -> Tensor:
    """``sigmas`` as float64, after checking it has ``steps + 1`` strictly decreasing levels ending in 0."""
    grid = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
    if len(grid) != steps + 1:
        raise UserError(f"{what} takes {steps + 1} noise levels (ending in 0), got {len(grid)}")
    levels = grid.detach()
    if float(levels[-1]) != 0 or not bool((levels[:-1] > levels[1:]).all()):
        raise UserError(f"the noise levels for {what} must decrease strictly and end in 0")
    return grid


def sample(model: Callable, noise: Tensor, *, sampler: str | None = None, nfe: int | None = None,
           schedule: str | None = None,
           sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
           class_labels: Tensor | int | None = None, guidance: float | None = None,
           guidance_interval: Interval | None = None, noise_fn: Callable[[Tensor], Tensor] | None = None,
           callback: Callable[[dict], None] | None = None, progress: bool = False, process: Process | None = None,
           sigmas: Tensor | None = None, teleport: float | None = None, afs: bool = False,
           data_stats: GaussianDataStats | str | Path | None = None, differentiable: bool = False,
           **hyper: Any) -> Tensor:
    """Generate data from standard-normal ``noise`` with exactly ``nfe`` calls of ``model``; without autograd unless
    ``differentiable`` (a fit by gradient through the sampler, ``samplers.learned``).

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
    D_u + W (D_c - D_u) (``guidance.Guided``; W = 1 by default, the plain conditional model), only at noise levels in
    ``guidance_interval`` (lo, hi] if given; ``nfe`` counts guided calls, each 2 network evaluations per sample when
    W != 1 (``network_levels`` tells which calls an interval guides).

    Gaussian shortcuts (EDM-family and PSLD models; ``data_stats``: the data's ``GaussianDataStats`` or their file,
    see ``processes.gaussian_data``): ``teleport=sigma_T`` (PSLD: a time t_T) moves the prior sample from sigma_max to
    sigma_T by the exact PF-ODE flow of Gaussian data (``process.gaussian_transport``, no network call) and the
    sampler then spends all ``nfe`` calls on a schedule over [sigma_min, sigma_T] (an explicit ``sigmas`` grid must
    start at sigma_T). ``afs`` answers the sampler's first call with the Gaussian data's exact model output
    (``process.gaussian_model``: D, or PSLD's ε), so the sampler runs its grid of ``nfe + 1`` calls of which ``nfe``
    are network calls; ``nfe`` (and the progress bar) count network calls only. With ``class_labels`` the Gaussian
    stand-in is the unconditional data's.
    """
    plan = plan_sampling(model, sampler=sampler, nfe=nfe, schedule=schedule, sigma_min=sigma_min,
                         sigma_max=sigma_max, rho=rho, process=process, sigmas=sigmas, teleport=teleport, afs=afs,
                         **hyper)
    sampler, nfe, sigmas, start = plan.sampler, plan.nfe, plan.sigmas, plan.start
    level_name = model_process(model, process).level_name
    stats = gaussian_shortcuts(teleport, afs, data_stats, noise, plan.sigma_min, start, level_name)
    guided = guided_model(model, plan.family, class_labels, guidance, noise.shape[0], guidance_interval)
    evals = nfe if class_labels is None else network_evaluations(
        nfe, guidance, guidance_interval, None if guidance_interval is None else network_levels(plan))
    start_at = f" from {level_name} {teleport:g}" if teleport is not None else ""
    extra = "".join([" +1 analytic call" if afs else "", start_at,
                     f" ({evals} network evaluations)" if evals > nfe else ""])
    bar = tqdm(total=nfe, desc=f"{sampler} {nfe} NFE{extra}", disable=not progress, leave=False)
    show_compiling(model, bar)
    process = model_process(model, process)
    den = AnalyticFirstCall(guided, process, bar, process.gaussian_model(stats)) if afs else CountedModel(
        guided, process, bar)
    if teleport is None:
        x = process.prior(noise.float(), sigmas[0], noise_fn or torch.randn_like)
    else:
        x = process.prior(noise.float(), torch.tensor(start, dtype=torch.float64), noise_fn or torch.randn_like)
        x = process.gaussian_transport(stats, x, start, float(sigmas[0]))
    x = run_counted(plan.spec, den, x, sigmas.to(x.device), nfe, noise=noise_fn, callback=callback,
                    differentiable=differentiable, **hyper)
    bar.close()
    return process.data_part(x)


@dataclass(frozen=True)
class SamplingPlan:
    """What ``sample`` runs: the sampler, its NFE (network calls), its spec and grid (``nfe + 1`` denoiser calls with
    ``afs``), the family, sigma_min and the prior's noise level ``start``."""

    sampler: str
    nfe: int
    spec: SamplerSpec
    sigmas: Tensor
    family: str
    sigma_min: float
    start: float
    afs: bool
    hyper: dict


def plan_sampling(model: Callable, *, sampler: str | None = None, nfe: int | None = None, schedule: str | None = None,
                  sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
                  process: Process | None = None, sigmas: Tensor | None = None, teleport: float | None = None,
                  afs: bool = False, **hyper: Any) -> SamplingPlan:
    """``sample``'s sampler, NFE and noise-level grid for these keywords, checked, without a network call."""
    sampler, nfe = resolve_sampler(model, sampler, nfe, process)
    family = check_gaussian_family(model, process, teleport, afs)
    spec = check_sampler_args(sampler, nfe, hyper, afs)
    if spec.family != family:
        names = ", ".join(sorted(n for n, s in SAMPLERS.items() if s.family == family))
        raise UserError(f"sampler '{sampler}' is a {spec.family} sampler and this is a {family} model: use one of "
                        f"{names}")
    lo, hi = sampling_range(model, process)
    steps = spec.steps(nfe + 1 if afs else nfe)
    start = float(sigma_max or hi)  # the prior's noise level
    if sigmas is None:
        sigmas = make_sigmas(schedule or spec.schedule, steps, sigma_min or lo,
                             start if teleport is None else teleport, rho)
    else:
        sigmas = check_grid(sigmas, steps, f"{sampler} at NFE {nfe}" + (" with --afs" if afs else ""))
        if teleport is not None and not math.isclose(float(sigmas[0]), teleport, rel_tol=1e-6):
            raise UserError(f"--teleport {teleport:g}: the given noise levels start at {float(sigmas[0]):g}; a "
                            f"teleported run's grid must start at the teleport level")
    return SamplingPlan(sampler, nfe, spec, sigmas, family, float(sigma_min or lo), start, afs, hyper)


def network_levels(plan: SamplingPlan) -> list[float]:
    """The noise levels of the plan's ``nfe`` network calls, in order: a dry run of its sampler with D = 0 on one
    number (the levels depend on the grid alone; the analytic first call of ``afs`` is left out)."""
    if plan.family != "edm":
        raise UserError(f"noise levels of the calls are defined for EDM-family samplers, not {plan.family}")
    levels: list[float] = []

    def record(x: Tensor, sigma: Tensor) -> Tensor:
        levels.append(float(sigma[0]))
        return torch.zeros_like(x)

    run_counted(plan.spec, CountedModel(record), torch.zeros(1, 1, dtype=torch.float64), plan.sigmas,
                plan.nfe + plan.afs, noise=torch.zeros_like, **plan.hyper)
    return levels[plan.afs:]


def sampled_guidance(model: Callable, class_labels: ClassSpec, guidance: float | None, interval: Interval | None, *,
                     nfe: int, **plan_kwargs: Any) -> dict:
    """``guidance_protocol`` of ``sample`` run with these ``plan_sampling`` keywords (an interval's guided calls are
    counted on the plan's ``network_levels``)."""
    levels = None if class_labels is None or interval is None else network_levels(
        plan_sampling(model, nfe=nfe, **plan_kwargs))
    return guidance_protocol(class_labels, guidance, nfe, interval, levels)


class AnalyticFirstCall(CountedModel):
    """The counted model with the sampler's first call answered by ``first(x, sigma)`` (the Gaussian denoiser of the
    analytic first step): no network call, so neither counted nor shown on the progress bar."""

    def __init__(self, model: Callable, process: Process, progress: tqdm | None, first: Callable) -> None:
        super().__init__(model, process, progress)
        self.first: Callable | None = first

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        if self.first is None:
            return super().__call__(x, sigma)
        first, self.first = self.first, None
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return first(x, sigma).to(x.dtype)


def model_data_shape(model: Callable) -> tuple[int, ...] | None:
    """The shape of one sample of a ``ProcessModel``; None for a bare callable, which does not say."""
    return tuple(model.data_shape) if isinstance(model, ProcessModel) else None


def check_gaussian_family(model: Callable, process: Process | None = None, teleport: float | None = None,
                          afs: bool = False) -> str:
    """The model's sampler family, after checking that ``teleport`` / ``afs``, if asked, apply to it: they need a
    diffusion model (EDM family or PSLD), not a DSNO student."""
    family = model_family(model, process)
    if (teleport is not None or afs) and family not in GAUSSIAN_FAMILIES:
        what = "--teleport" if teleport is not None else "--afs"
        raise UserError(f"{what} needs a diffusion model (EDM family or PSLD); this is a {family} model")
    return family


def gaussian_options(teleport: float | None, afs: bool, data_stats: GaussianDataStats | str | Path | None,
                     model_path: str | Path | None, model: Callable) -> dict:
    """``sample``'s keywords (teleport, afs, data_stats) for a model loaded from ``model_path`` (or None), with the
    statistics resolved (``data.stats.resolve_data_stats``: DATA[@SPLIT], a file, or the model's own); {} when
    neither teleport nor afs is asked (``data_stats`` alone change nothing)."""
    if teleport is None and not afs:
        return {}
    from .data.stats import resolve_data_stats

    check_gaussian_family(model, None, teleport, afs)
    return {"teleport": teleport, "afs": bool(afs),
            "data_stats": resolve_data_stats(model_path, data_stats, model_data_shape(model))}


def check_teleport_level(teleport: float, lo: float, start: float, level_name: str = "sigma") -> None:
    """A one-line UserError unless the lowest level ``lo`` < ``teleport`` < the prior's level ``start``
    (``level_name``: the process's, e.g. PSLD's 't')."""
    if not (math.isfinite(teleport) and lo < teleport < start):
        raise UserError(f"--teleport {teleport:g}: give a noise level {level_name} between {level_name}_min {lo:g} "
                        f"and {level_name}_max {start:g}")


def gaussian_shortcuts(teleport: float | None, afs: bool, data_stats: GaussianDataStats | str | Path | None,
                       noise: Tensor, lo: float, start: float, level_name: str = "sigma") -> GaussianDataStats | None:
    """The data statistics ``teleport`` / ``afs`` use, after checking the teleport level lies inside (lo,
    start) and the statistics fit the noise's shape; None when neither is asked."""
    if teleport is None and not afs:  # data_stats alone change nothing (the CLI refuses --data-stats alone)
        return None
    what = "--teleport" if teleport is not None else "--afs"
    if teleport is not None:
        check_teleport_level(teleport, lo, start, level_name)
    if data_stats is None:
        raise UserError(f"{what} needs the data's mean and covariance: pass data_stats (--data-stats DATA|FILE)")
    stats = data_stats if isinstance(data_stats, GaussianDataStats) else GaussianDataStats.load(data_stats)
    stats.check_shape(noise.shape[1:])
    return stats


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

    shape = tuple(data_shape or model_data_shape(model) or ())
    if not shape:
        raise UserError("the model does not say its data shape: pass data_shape=(C, H, W)")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    labels = classes_for_seeds(class_labels, seeds, model_label_dim(model))
    if isinstance(sample_kwargs.get("data_stats"), str | Path):  # read a statistics file once, not per batch
        sample_kwargs["data_stats"] = GaussianDataStats.load(sample_kwargs["data_stats"])
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
