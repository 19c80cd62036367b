"""Per-model schedule tuning: a sampler's noise levels fitted to the model's own PF-ODE (docs/samplers.md, "Per-model
schedules").

The reference is a high-accuracy solve of the model's PF-ODE from the tuning noise (``REFERENCES``, per model family).
For the EDM family a dynamic program over the reference's own grid picks the levels whose one-step Euler errors along
the reference trajectory sum least (GITS, Chen et al. 2024); the interior levels (PSLD: times) are then refined to
minimise the sampler's real endpoint error (Nelder-Mead in softmax-parameterised log-level decrements). The end levels
stay at the model's sampling range.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write_json
from ..errors import UserError
from ..processes import Process
from ..processes.gaussian_data import GaussianDataStats
from ..sampling import model_family, model_process, sample, sampling_range
from .registry import deterministic_samplers, get_sampler
from .schedules import make_sigmas

# The tuning target per model family: sampler, NFE, grid and options. EDM family: Heun, 64 steps on the Karras grid.
# PSLD: CSPS-D, second order with lam = 0 (it needs a constant beta), 255 steps on the quadratic grid.
REFERENCES = {"edm": ("heun", 127, "karras", {}), "psld": ("csps-d", 255, "quadratic", {"lam": 0.0})}
START_SCHEDULES = {"edm": ("karras", "logsnr"), "psld": ("quadratic", "time-uniform")}
MIN_STEP = 0.01  # smallest log-level decrement, as a fraction of ln(sigma_max / sigma_min)
UNSTABLE_STD = 5.0  # a reference endpoint this many times as spread as the noise: the model's PF-ODE diverges
PRIOR_SEED = 0  # the draw of whatever part of the prior the tuning noise does not give (PSLD's momentum)
# Sampler coefficients fitted with the levels unless given, each with its unit in the search (lambda-DDIM's lam is
# in 1/sigma: 0.01 moves a 4-step solve visibly), and the first simplex step in those units.
FITTED = {"lam": 0.01}
SIMPLEX_STEP = 0.25
# With a sharpness tolerance the RMS is scaled by 1 + SHARPNESS_WEIGHT x (how far the HF ratio lies outside the band):
# a grid 5% outside costs 1.5x. The RMS may grow at most SHARPNESS_RMS_SLACK over the RMS fit's: with more, a trained
# model's samples got sharp but wrong (dpmpp-2m at NFE 5 on the CPU demo model: HF 1.45x -> 1.07x, FD 124 -> 463).
SHARPNESS_WEIGHT = 10.0
SHARPNESS_RMS_SLACK = 0.1
RMS_WALL = 100.0
# What counts as sharp (issue 20's "HF energy within 10% of the reference's"), and the default band of fits per family
# on images: on a trained digits32 U-Net it made NFE-5 fits sharp at under 1% FD on the best rows; on the CPU PSLD demo
# model it cost 7% FD at NFE 5 and stayed outside the band (docs/results.md, session 14).
HF_TOLERANCE = 0.1
DEFAULT_HF_TOLERANCE = {"edm": HF_TOLERANCE, "psld": None}
Distance = Literal["rms", "mean-l2"]
DISTANCES: tuple[Distance, ...] = ("rms", "mean-l2")  # endpoint_distance's measures; fits use the first unless told


def endpoint_gap(x: Tensor, ref: Tensor, distance: Distance = "rms") -> Tensor:
    """``rms``: sqrt(mean (x - ref)^2) over all samples and entries; ``mean-l2``: mean over samples of ||x - ref||_2,
    which weighs a few far-off samples less (a 0-dim tensor, differentiable in ``x``)."""
    diff = (x - ref).float().flatten(1)
    return diff.square().mean().sqrt() if distance == "rms" else diff.norm(dim=1).mean()


def endpoint_distance(x: Tensor, ref: Tensor, distance: Distance = "rms") -> float:
    """``endpoint_gap`` as a float."""
    return float(endpoint_gap(x, ref, distance))


@dataclass(frozen=True)
class Reference:
    """A high-accuracy PF-ODE solve from the tuning noise: states ``x[i]`` and denoiser outputs ``denoised[i]`` at the
    levels ``sigmas[i]`` of its grid (the last positive level included), and the endpoints."""

    sigmas: Tensor
    x: list[Tensor]
    denoised: list[Tensor]
    endpoint: Tensor


def reference_description(family: str) -> str:
    """What a fit's objective compares with, for protocols: 'heun 127 NFE on the karras grid'."""
    sampler, nfe, schedule, options = REFERENCES[family]
    return f"{sampler} {nfe} NFE on the {schedule} grid" + "".join(f", {k} = {v:g}" for k, v in options.items())


def objective_description(family: str, hf_tolerance: float | None = None, distance: Distance = "rms") -> str:
    """A fit's objective, for protocols: 'endpoint RMS to heun 127 NFE on the karras grid from the tuning noise'."""
    measure = "endpoint RMS" if distance == "rms" else "mean endpoint L2 distance"
    text = f"{measure} to {reference_description(family)} from the tuning noise"
    return text if hf_tolerance is None else (f"{text}; where the RMS fit's HF energy ratio lies outside 1 +- "
                                              f"{hf_tolerance:g}, then x (1 + {SHARPNESS_WEIGHT:g} x how far "
                                              f"outside), steeply penalised above {1 + SHARPNESS_RMS_SLACK:g} x the "
                                              f"RMS fit's RMS")


def resolve_hf_tolerance(hf_tolerance: float | Literal["auto"] | None, shape: Sequence[int],
                         family: str) -> float | None:
    """``"auto"``: the family's ``DEFAULT_HF_TOLERANCE`` for images of ``shape`` (N, C, H, W) of at least 3×3 pixels,
    else None (no sharpness measure)."""
    if hf_tolerance == "auto":
        return DEFAULT_HF_TOLERANCE[family] if len(shape) == 4 and min(shape[-2:]) >= 3 else None
    return hf_tolerance


def prior_noise(noise: Tensor) -> Callable[[Tensor], Tensor]:
    """``sample``'s ``noise_fn`` for a fit: one fixed draw (seed ``PRIOR_SEED``) for the part of the prior that
    ``noise`` does not give (PSLD's momentum), so that every sampler run of the fit starts from the same state."""
    extra = torch.randn(noise.shape, generator=torch.Generator().manual_seed(PRIOR_SEED), dtype=noise.dtype)
    extra = extra.to(noise.device)
    return lambda like: extra.to(like.dtype)


def tunable_family(model: Callable, process: Process | None = None) -> str:
    """The model's family, after checking that schedules can be tuned for it (one with ``REFERENCES``)."""
    family = model_family(model, process)
    if family not in REFERENCES:
        raise UserError(f"tune: schedules are tuned for {' and '.join(REFERENCES)}-family models, not a {family} model")
    return family


def reference_solve(model: Callable, noise: Tensor, *, nfe: int | None = None, process: Process | None = None,
                    class_labels: Tensor | None = None, teleport: float | None = None,
                    data_stats: GaussianDataStats | None = None) -> Reference:
    """The family's ``REFERENCES`` solve from ``noise`` (``nfe`` overrides its NFE), teleported to ``teleport`` by
    ``data_stats`` if given (``sample``). Where its callback reports D (the EDM family's Heun, EDM Algorithm 1) the
    state and D at every grid level are kept, for ``dp_grid``."""
    family = tunable_family(model, process)
    sampler, default_nfe, schedule, options = REFERENCES[family]
    states: list[Tensor] = []
    denoised: list[Tensor] = []
    levels: list[float] = []
    lo, hi = sampling_range(model, process)

    def keep(info: dict) -> None:
        if "denoised" in info:
            levels.append(float(info["sigma"]))
            denoised.append(info["denoised"])

    def record(x: Tensor, level: Tensor) -> Tensor:
        states.append(x)
        return model(x, level) if class_labels is None else model(x, level, class_labels)

    try:
        end = sample(record, noise, sampler=sampler, nfe=nfe or default_nfe, schedule=schedule,
                     process=model_process(model, process), callback=keep, sigma_min=lo, sigma_max=hi,
                     noise_fn=prior_noise(noise), teleport=teleport, data_stats=data_stats, **options)
    except UserError as e:  # e.g. CSPS-D on a PSLD model with a time-varying beta
        raise UserError(f"tune: the reference solve ({reference_description(family)}) cannot run on this model: "
                        f"{e}") from None
    if float(end.float().std()) > UNSTABLE_STD * float(noise.float().std()):
        print(f"warning: tune: the reference solve ({reference_description(family)}) ends with a spread of "
              f"{float(end.float().std()):.3g}, far beyond the noise's: this model's probability-flow ODE looks "
              f"unstable, and a grid fitted to it will follow that; start below the unstable part with --teleport "
              f"(docs/guide.md, 'PSLD models')", file=sys.stderr)
    if not denoised:  # a reference without denoiser outputs (PSLD's ε samplers): no states for dp_grid
        return Reference(torch.zeros(0, dtype=torch.float64), [], [], end)
    # Heun calls D twice per step: its first call of step i sees the state at level i.
    firsts = states[0::2]
    return Reference(torch.tensor(levels, dtype=torch.float64), firsts[:len(levels)], denoised, end)


def dp_grid(ref: Reference, n: int) -> Tensor:
    """``n`` levels of the reference grid, first and last kept, minimising the sum of one-step Euler errors
    ``||x_i + (sigma_j - sigma_i)(x_i - D_i)/sigma_i - x_j||`` along the reference trajectory (GITS)."""
    k = len(ref.sigmas)
    if n < 2 or n > k:
        raise UserError(f"cannot pick {n} levels from a reference grid of {k}")
    s = ref.sigmas.tolist()
    cost = np.full((k, k), np.inf)
    for i in range(k - 1):
        d = (ref.x[i] - ref.denoised[i]) / s[i]
        for j in range(i + 1, k):
            step = ref.x[i] + (s[j] - s[i]) * d
            cost[i, j] = float((step - ref.x[j]).float().square().mean().sqrt())
    best = np.full((n, k), np.inf)  # best[m, j]: least cost of reaching level j as the m-th pick
    back = np.zeros((n, k), dtype=int)
    best[0, 0] = 0.0
    for m in range(1, n):
        for j in range(1, k):
            total = best[m - 1, :j] + cost[:j, j]
            back[m, j] = int(np.argmin(total))
            best[m, j] = total[back[m, j]]
    picks = [k - 1]
    for m in range(n - 1, 0, -1):
        picks.append(back[m, picks[-1]])
    return torch.tensor([s[i] for i in reversed(picks)], dtype=torch.float64)


def levels_from_logits(z: np.ndarray | Tensor, lo: float, hi: float) -> Tensor:
    """Positive levels ``hi .. lo`` whose ln-sigma decrements are ``L (MIN_STEP + (1 - k MIN_STEP) softmax([0, z]))``,
    L = ln(hi/lo), k = len(z) + 1: any real ``z`` gives a strictly decreasing grid with fixed ends (differentiable
    in a tensor ``z``)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    frac = MIN_STEP + (1 - (len(z) + 1) * MIN_STEP) * torch.softmax(torch.cat([z.new_zeros(1), z]), 0)
    u = math.log(hi) - math.log(hi / lo) * torch.cumsum(frac, 0)
    return torch.cat([z.new_tensor([hi]), torch.exp(u[:-1]), z.new_tensor([lo])])


def logits_from_levels(levels: Tensor, lo: float, hi: float) -> np.ndarray:
    """The ``z`` of ``levels_from_logits`` (a decrement below MIN_STEP L is taken at the floor)."""
    d = -np.diff(np.log(levels.numpy())) / math.log(hi / lo)
    w = np.maximum(d - MIN_STEP, 1e-9)
    return np.log(w[1:]) - np.log(w[0])


@dataclass(frozen=True)
class TunedSchedule:
    """A tuned grid (descending, ending in 0) and the fitted sampler coefficients (``hyper``), with its objective
    before and after refinement and its starts; ``start`` names the grid the last search began from (``rms-fit``:
    the sharpness search from the RMS fit)."""

    sigmas: Tensor
    hyper: dict[str, float | list[float]]
    value: float
    start: str
    start_values: dict[str, float]
    evaluations: int


def fit_schedule(model: Callable, *, sampler: str, nfe: int, noise: Tensor, process: Process | None = None,
                 class_labels: Tensor | None = None, reference: Reference | None = None, max_evals: int = 200,
                 teleport: float | None = None, data_stats: GaussianDataStats | None = None,
                 hf_tolerance: float | Literal["auto"] | None = "auto", distance: Distance = "rms",
                 **hyper: object) -> TunedSchedule:
    """Fit the noise levels (PSLD: times) of ``sampler`` at ``nfe`` calls to ``model``'s own PF-ODE from ``noise``:
    the ``endpoint_distance`` (``distance``) to ``reference`` (default: ``reference_solve``), from the best of the
    family's ``START_SCHEDULES`` (and the DP grid, EDM family), refined by Nelder-Mead within ``max_evals`` sampler
    runs, together with the sampler's ``FITTED`` coefficients that ``hyper`` does not fix and that have a default value.
    With ``teleport`` (and ``data_stats``) every run, the reference's too, is teleported and the grid spans
    [sigma_min, teleport]. With ``hf_tolerance`` (images; "auto": the family's ``DEFAULT_HF_TOLERANCE``),
    where that fit's endpoints' high-frequency energy lies outside ±hf_tolerance of the reference's, the search goes
    on (``max_evals // 2`` runs) with the RMS scaled by 1 + ``SHARPNESS_WEIGHT`` × how far outside and a steep wall
    ``SHARPNESS_RMS_SLACK`` above the RMS fit's RMS.
    Tuning calls are not the sampler's NFE."""
    spec = get_sampler(sampler)
    family = tunable_family(model, process)
    if spec.family != family:
        raise UserError(f"tune: '{sampler}' is a {spec.family} sampler and the model is of the {family} family: "
                        f"tune one of {', '.join(deterministic_samplers(family))}")
    if spec.stochastic or hyper.get("churn"):
        raise UserError(f"tune: '{sampler}' is stochastic; tune a deterministic sampler")
    if distance not in DISTANCES:
        raise UserError(f"tune: unknown endpoint distance {distance!r}: choose {' or '.join(DISTANCES)}")
    hf_tolerance = resolve_hf_tolerance(hf_tolerance, noise.shape, family)
    if hf_tolerance is not None and not (hf_tolerance >= 0 and noise.ndim == 4):
        raise UserError(f"tune: --hf-tolerance {hf_tolerance} needs a fraction >= 0 (0.1: within 10%) and image "
                        f"noise (N, C, H, W), not shape {tuple(noise.shape)}")
    steps = spec.steps(nfe)
    lo, hi = sampling_range(model, process)
    shortcut = {"teleport": teleport, "data_stats": data_stats}
    ref = reference or reference_solve(model, noise, process=process, class_labels=class_labels, **shortcut)
    hi = hi if teleport is None else teleport
    # A coefficient whose default is None comes from a per-NFE table (PSLD's lam) and stays there.
    free = {k: float(spec.hyper[k]) for k in FITTED if spec.hyper.get(k) is not None and k not in hyper}
    noise_fn = prior_noise(noise)
    evaluations = 0
    if hf_tolerance is not None:
        from ..metrics.sharpness import hf_energy, outside_band  # here: the metrics package loads slowly

        ref_hf = hf_energy(ref.endpoint)
        if ref_hf == 0:  # flat reference images: no fine detail to keep
            hf_tolerance = None

    def objective(levels: Tensor, coef: dict[str, float], distance_cap: float | None = None) -> float:
        """The endpoint distance; with ``distance_cap`` (sharpness search) times the sharpness factor and the wall
        above the cap."""
        nonlocal evaluations
        evaluations += 1
        grid = torch.cat([levels, levels.new_zeros(1)])
        out = sample(model, noise, sampler=sampler, nfe=nfe, sigmas=grid, process=process,
                     class_labels=class_labels, noise_fn=noise_fn, **shortcut, **hyper, **coef)
        err = endpoint_distance(out, ref.endpoint, distance)
        if not math.isfinite(err):
            return math.inf
        if distance_cap is not None:  # a steep but finite wall above it: Nelder-Mead can still rank what lies there
            err *= ((1 + SHARPNESS_WEIGHT * outside_band(hf_energy(out) / ref_hf, hf_tolerance))
                    * (1 + RMS_WALL * max(0.0, err / distance_cap - 1)))
        return err

    starts = start_grids(ref, family, steps, lo, hi)
    start_values = {name: objective(levels, free) for name, levels in starts.items()}
    start = min(start_values, key=start_values.__getitem__)
    n_z = steps - 2 if steps >= 3 else 0

    def refine(levels: Tensor, coef: dict[str, float], value: float, evals: int,
               distance_cap: float | None = None) -> tuple[Tensor, dict[str, float], float]:
        """Nelder-Mead from (levels, coef) of objective ``value`` within ``evals`` runs; the start if it stays best."""
        def unpack(p: np.ndarray) -> tuple[Tensor, dict[str, float]]:
            return (levels_from_logits(p[:n_z], lo, hi) if n_z else levels,
                    {k: float(v) * FITTED[k] for k, v in zip(free, p[n_z:], strict=True)})

        x0 = np.concatenate([logits_from_levels(levels, lo, hi) if n_z else [],
                             [v / FITTED[k] for k, v in coef.items()]])
        if not len(x0) or evals < 1:
            return levels, coef, value
        from scipy.optimize import minimize  # here, not above: `sample` imports this module, and scipy loads slowly

        # scipy's own first simplex steps 5% of each coordinate and 2.5e-4 where it is 0: a log-SNR start (all
        # logits 0) or a coefficient at 0 would never leave the start.
        simplex = np.vstack([x0, x0 + SIMPLEX_STEP * np.eye(len(x0))])
        result = minimize(lambda p: objective(*unpack(p), distance_cap), x0, method="Nelder-Mead",
                          options={"maxfev": evals, "xatol": 1e-3, "fatol": 1e-6, "initial_simplex": simplex})
        return (*unpack(result.x), float(result.fun)) if result.fun < value else (levels, coef, value)

    levels, coef, value = refine(starts[start], free, start_values[start], max_evals - len(starts))
    if hf_tolerance is not None:
        # The sharpness term only where the RMS fit leaves the band (a sharp RMS fit stays as it is), from the best of
        # that fit and the starts under it: the RMS fit's own neighbourhood often holds no sharp grid.
        cap = (1 + SHARPNESS_RMS_SLACK) * value
        sharp_value = objective(levels, coef, cap)
        if sharp_value > value:
            sharp_starts = {"rms-fit": (levels, coef, sharp_value),
                            **{name: (g, free, objective(g, free, cap)) for name, g in starts.items()}}
            start = min(sharp_starts, key=lambda name: sharp_starts[name][2])
            levels, coef, value = refine(*sharp_starts[start], max_evals // 2, cap)
    return TunedSchedule(torch.cat([levels, levels.new_zeros(1)]), coef, value, start, start_values, evaluations)


def start_grids(ref: Reference, family: str, steps: int, lo: float, hi: float) -> dict[str, Tensor]:
    """The positive levels a fit may start from: the family's ``START_SCHEDULES`` and, for the EDM family, the DP
    grid along the reference."""
    starts = {name: make_sigmas(name, steps, lo, hi)[:-1] for name in START_SCHEDULES[family]}
    if steps >= 2 and ref.x:  # the DP needs the reference's states: EDM family
        starts["dp"] = dp_grid(ref, steps)
    return starts


def tune_schedule(model: Callable, *, sampler: str, nfe: int, noise: Tensor, **options: object) -> Tensor:
    """The grid of ``fit_schedule`` (descending noise levels ending in 0), as ``sample(..., sigmas=grid)`` takes it."""
    return fit_schedule(model, sampler=sampler, nfe=nfe, noise=noise, **options).sigmas


def model_digest(model: Callable) -> str | None:
    """sha256 of a ``ProcessModel``'s network weights (None for a bare callable): which model a schedule fits."""
    from ..fastpath import SamplingNet
    from ..models import ProcessModel

    if not isinstance(model, ProcessModel):
        return None
    net = model.net.net if isinstance(model.net, SamplingNet) else model.net  # the same weights on the fast path
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_schedule(path: str | Path, tuned: TunedSchedule, protocol: dict) -> None:
    """The grid and its protocol (model digest, sampler, NFE, tuning seeds, objective, value) as a small JSON."""
    atomic_write_json(Path(path), {"sigmas": tuned.sigmas.tolist(), "hyper": tuned.hyper, "value": tuned.value,
                                   "start": tuned.start,
                                   "start_values": tuned.start_values, "evaluations": tuned.evaluations,
                                   "protocol": protocol})


def load_schedule(path: str | Path, sampler: str, nfe: int, model: Callable | None = None,
                  teleport: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """The grid and fitted coefficients of a saved schedule, after checking it was tuned for ``sampler`` at ``nfe``
    and the same ``teleport`` (and warning when it was tuned on another model)."""
    try:
        obj = json.loads(Path(path).read_text())
        sigmas, protocol = obj["sigmas"], obj["protocol"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--schedule {path}: not a schedule file written by `fastdiffusion tune` ({e})") from None
    if (protocol.get("sampler"), protocol.get("nfe")) != (sampler, nfe):
        raise UserError(f"--schedule {path}: tuned for {protocol.get('sampler')} at NFE {protocol.get('nfe')}, not "
                        f"{sampler} at NFE {nfe}; pass --sampler {protocol.get('sampler')} --nfe {protocol.get('nfe')}")
    tuned_teleport = protocol.get("teleport")
    if tuned_teleport != teleport:
        raise UserError(f"--schedule {path}: tuned " + (f"with --teleport {tuned_teleport:g}: pass the same --teleport"
                        if tuned_teleport is not None else "without --teleport: drop --teleport"))
    digest = model_digest(model) if model is not None else None
    if digest is not None and protocol.get("model_sha256") not in (None, digest):
        print(f"warning: --schedule {path} was tuned on another model (weights sha256 "
              f"{str(protocol.get('model_sha256'))[:12]}…)", file=sys.stderr)
    return torch.tensor(sigmas, dtype=torch.float64), dict(obj.get("hyper") or {})


def schedule_options(schedule: str | None, sampler: str, nfe: int, model: Callable | None = None,
                     given: dict | None = None, teleport: float | None = None) -> dict:
    """``sample`` keywords for ``--schedule``: ``{'schedule': NAME}`` for a schedule name (or None: the sampler's),
    ``{'sigmas': grid, **fitted coefficients}`` for a file written by ``fastdiffusion tune`` (less those ``given``
    as sampler options, which win); the file must have been tuned with the run's ``teleport``."""
    from .schedules import SCHEDULES

    if schedule is None or schedule in SCHEDULES:
        return {"schedule": schedule}
    if not Path(schedule).is_file():
        raise UserError(f"--schedule {schedule}: neither a schedule ({', '.join(SCHEDULES)}) nor a schedule file "
                        f"from `fastdiffusion tune`")
    sigmas, fitted = load_schedule(schedule, sampler, nfe, model, teleport)
    return {"sigmas": sigmas, **{k: v for k, v in fitted.items() if k not in (given or {})}}
