"""``fastdiffusion bench samplers``: EDM-family samplers against the exact PF-ODE of Gaussian mixtures.

Protocol (every number in the outputs comes from it):

* **Problems** (exact scores, ``fastdiffusion.data.gmm``): ``ring2d`` (2-D, 8 modes of std 0.1 on a circle),
  ``random2d`` (``GaussianMixture.random(2, 8, seed=2, component_std=0.2)``), ``benchmark64`` (64-D, 16 anisotropic
  modes) and ``random64`` (``random(64, 16, seed=65, spread=0.9, component_std=0.3)``): two independent mixtures
  per dimension. ``--dims`` picks the dimensions.
* **Noise**: ``n`` standard normals per problem from a fixed seed, scaled by sigma_max; sigma in [0.002, 80] (EDM's
  range); every sampler starts from the same x_T.
* **Exact endpoint**: the PF-ODE ``dx/du = x - D(x; e^u)``, u = ln sigma, integrated in float64 by scipy's DOP853
  (rtol 1e-10, atol 1e-10) from ln 80 to ln 0.002, followed by ``D(x; 0.002)``: the same final denoising call that
  ends every sampler here (``fastdiffusion.samplers.multistep``), so the reference and the samplers target the same
  map from noise to data.
* **Samplers**: each deterministic EDM-family sampler (``--samplers``, ``name`` or ``name@schedule``) with its
  default schedule (rho = 7) and hyperparameters, plus ``VARIANTS`` (other schedules, the tuned grids among them),
  in float64, at NFE in {3, 4, 5, 6, 8, 10, 15, 20, 35, 50, 100}. An NFE a sampler cannot make (heun: even NFE) is
  recorded as n/a; every run's network calls are counted and must equal its NFE.
* **Metrics**: endpoint error = mean over samples of ``||x - x_exact||_2``; distribution distance = sliced
  Wasserstein-2 (``fastdiffusion.metrics.sliced``, 256 directions from a fixed seed) to ``n`` fresh data samples of a
  fixed seed; ``sw2_floor`` is the exact endpoints' SW2 to the same data (what a perfect solver gets at this n).
* **Target** (issue 4): the best sampler's endpoint error at NFE 5 and 10 is at most half of DPM-Solver++(2M)'s
  (the better of its runs: default logsnr and the karras variant), on every problem of each dimension. When the
  samplers run on the ``tuned`` schedule, DPM-Solver++(2M) on its own tuned grid is reported beside the baseline
  (``ratio_vs_tuned``), so the gain from the grid and the gain from the solver can be told apart.

**lambda-DDIM tuning** (``--tune-lambda``): four tuning mixtures generated separately from the benchmark ones
(``random(2, 8, seed=1001/1002, component_std=0.2)``, ``random(64, 16, seed=1064/1065, spread=0.9,
component_std=0.3)``), their own noise seeds, ``n`` points each, the karras schedule on [0.002, 80]. For each NFE,
lambda minimises the geometric mean over the four mixtures of the endpoint error (so 2-D and 64-D count alike) on a
coarse grid (-0.04 ... 0.01, step 0.004) refined around its best point (step 0.001). The winning table is written to
``lambda_tuning.json`` and printed as the dict that ``fastdiffusion.samplers.conjugate.LAMBDA_BY_NFE`` holds.

**Schedule tuning** (``--tune-schedule``; the ``tuned`` schedule, ``fastdiffusion.samplers.tuned``): the same four
tuning mixtures, noise seeds and ``n``, sigma in [0.002, 80]. For each sampler (default ipndm, lambda-ddim at its
tuned lambda, dpmpp-2m) and NFE (default 3..10) the NFE levels are ``sigma_max = s_0 > ... > s_{NFE-1} =
sigma_min``; the NFE - 2 interior ones are free, parameterised by logits z (NFE - 2 reals) as ln-sigma decrements
``ln s_j - ln s_{j+1} = (ln sigma_max - ln sigma_min) softmax([0, z])_j``, so every candidate is a strictly
decreasing grid with fixed ends. The objective is ln of the geometric mean over the four mixtures of the endpoint
error. Start: the best of karras (rho 3, 5, 7, 10) and logsnr; search: up to two rounds of scipy Powell then adaptive
Nelder-Mead (1000 evaluations each, xtol 1e-3, ftol 1e-5), stopping when a round gains < 1e-4 in the objective. The
interior positions ``t_i = ln(s_i/sigma_min)/ln(sigma_max/sigma_min)`` (6 decimals) go to ``schedule_tuning.json``
with every start's and the stored grid's objective, and are printed as the dict that
``fastdiffusion.samplers.tuned.TUNED_T`` holds. The benchmark problems are never evaluated during tuning.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write_bytes
from ..data.gmm import GaussianMixture
from ..errors import UserError
from ..metrics.sliced import sliced_wasserstein
from ..samplers import SAMPLERS, get_sampler, make_sigmas
from .provenance import provenance

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
NFES = (3, 4, 5, 6, 8, 10, 15, 20, 35, 50, 100)
QUICK_NFES = (3, 5, 10)
EXACT_RTOL = 1e-10
N_PROJECTIONS = 256
TARGET_NFES = (5, 10)
TARGET_RATIO = 0.5
BASELINE = "dpmpp-2m"
BASELINE_SCHEDULES = ("logsnr", "karras")


@dataclass(frozen=True)
class Problem:
    """A benchmark mixture and the seed of its noise / data draws."""

    name: str
    make: Callable[[], GaussianMixture]
    dim: int
    seed: int


PROBLEMS = (
    Problem("ring2d", GaussianMixture.ring2d, 2, 11),
    Problem("random2d", lambda: GaussianMixture.random(2, 8, seed=2, component_std=0.2), 2, 12),
    Problem("benchmark64", GaussianMixture.benchmark64, 64, 13),
    Problem("random64", lambda: GaussianMixture.random(64, 16, seed=65, spread=0.9, component_std=0.3), 64, 14),
)
QUICK_PROBLEMS = ("ring2d", "benchmark64")
TUNING_PROBLEMS = (
    Problem("tune2d-a", lambda: GaussianMixture.random(2, 8, seed=1001, component_std=0.2), 2, 1011),
    Problem("tune2d-b", lambda: GaussianMixture.random(2, 8, seed=1002, component_std=0.2), 2, 1012),
    Problem("tune64-a", lambda: GaussianMixture.random(64, 16, seed=1064, spread=0.9, component_std=0.3), 64, 1013),
    Problem("tune64-b", lambda: GaussianMixture.random(64, 16, seed=1065, spread=0.9, component_std=0.3), 64, 1014),
)


# -- exact scores ----------------------------------------------------------------------------------------------------
class MixtureDenoiser:
    """``GaussianMixture.denoise`` for one scalar sigma per call, by matrix products (no (n, K, D) temporaries).

    The same posterior mean ``D(x, sigma) = x - sigma^2 sum_k r_k(x) (x - mu_k) / t_k``, ``t_k = v_k + sigma^2``, with
    the responsibilities' quadratic forms expanded as ``sum_d x_d^2/t_kd - 2 x_d mu_kd/t_kd + mu_kd^2/t_kd``; it
    agrees with ``GaussianMixture.denoise`` to ~1e-13 on the benchmark problems (tests/test_bench.py) and is ~30x
    faster in 64-D, which keeps the benchmark within minutes on two CPU cores.
    """

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        self.mu, self.var, self.log_w = mixture.means, mixture.variances, mixture.weights.log()

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if len(sigma) > 1 and not bool((sigma == sigma[0]).all()):  # one sigma per row: the reference evaluation
            return self.mixture.denoise(x, sigma)
        s2 = float(sigma[0]) ** 2
        flat = x.reshape(len(x), -1).to(torch.float64)
        inv = 1.0 / (self.var + s2)  # (K, D)
        mu_inv = self.mu * inv
        quad = (flat * flat) @ inv.T - 2 * flat @ mu_inv.T + (self.mu * mu_inv).sum(1)  # (n, K)
        r = torch.softmax(self.log_w - 0.5 * (quad - inv.log().sum(1)), dim=1)
        out = flat - s2 * (flat * (r @ inv) - r @ mu_inv)
        return out.reshape(x.shape).to(x.dtype)


# -- exact reference -----------------------------------------------------------------------------------------------
def exact_endpoint(mixture: GaussianMixture, x_t: Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                   rtol: float = EXACT_RTOL) -> tuple[Tensor, int]:
    """``D(x(sigma_min); sigma_min)`` for the PF-ODE ``dx/du = x - D(x; e^u)`` from ``x(sigma_max) = x_t`` (float64
    DOP853 in u = ln sigma), and the number of right-hand-side evaluations it took."""
    from scipy.integrate import solve_ivp

    shape = x_t.shape
    denoise = MixtureDenoiser(mixture)

    def rhs(u: float, flat: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(flat).reshape(shape)
        return (x - denoise(x, math.exp(u))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(sigma_min)), x_t.double().reshape(-1).numpy(),
                    method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"exact PF-ODE solve failed: {sol.message}")
    x = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
    return denoise(x, sigma_min), int(sol.nfev)


# -- running samplers ----------------------------------------------------------------------------------------------
def parse_sampler(item: str) -> tuple[str, str]:
    """``name`` or ``name@schedule`` -> (name, schedule); the default schedule is the sampler's own."""
    name, _, schedule = item.partition("@")
    spec = get_sampler(name)
    if spec.family != "edm":
        raise UserError(f"bench samplers: '{name}' is a {spec.family} sampler, not an EDM-family one")
    return name, schedule or spec.schedule


# Schedule variants run by default besides every sampler's own schedule (the baseline on karras too, so the target is
# checked against DPM-Solver++(2M)'s better schedule; the baseline on its tuned grid too, so the tuned winners are also
# compared with a baseline given the same advantage).
VARIANTS = ("dpmpp-2m@karras", "ipndm@logsnr", "ipndm@tuned", "lambda-ddim@tuned", "dpmpp-2m@tuned")


def default_samplers() -> list[str]:
    """Every registered deterministic EDM-family sampler at its default schedule, plus ``VARIANTS``."""
    names = sorted(n for n, s in SAMPLERS.items() if s.family == "edm" and not s.stochastic)
    return names + [v for v in VARIANTS if v.partition("@")[0] in names]


def run_sampler(name: str, schedule: str, denoise: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, nfe: int,
                **hyper: object) -> Tensor | None:
    """The sampler's output from ``x_t`` (float64) with exactly ``nfe`` calls, or None if it cannot make ``nfe``."""
    spec = get_sampler(name)
    try:
        steps = spec.steps(nfe)
    except UserError:
        return None
    sigmas = make_sigmas(schedule, steps, SIGMA_MIN, SIGMA_MAX, RHO, sampler=name)
    return run_on_grid(name, denoise, x_t, sigmas, nfe, **hyper)


def run_on_grid(name: str, denoise: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, sigmas: Tensor, nfe: int,
                **hyper: object) -> Tensor:
    """The sampler's output from ``x_t`` on the grid ``sigmas``; raises unless it made exactly ``nfe`` calls."""
    spec = get_sampler(name)
    calls = 0

    def counted(x: Tensor, sigma: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return denoise(x, sigma)

    out = spec.fn(counted, x_t.clone(), sigmas, **{**spec.hyper, **hyper})
    if calls != nfe:
        raise RuntimeError(f"sampler '{name}' made {calls} network calls at NFE {nfe}")
    return out


def endpoint_error(x: Tensor, exact: Tensor) -> float:
    """Mean over samples of the L2 distance to the exact endpoint."""
    return float((x - exact).reshape(len(x), -1).norm(dim=1).mean())


@dataclass
class Prepared:
    """A problem with its noise, exact endpoints and data reference drawn."""

    problem: Problem
    mixture: GaussianMixture
    denoise: MixtureDenoiser
    x_t: Tensor
    exact: Tensor
    data: Tensor
    exact_nfev: int
    exact_seconds: float


def prepare(problem: Problem, n: int, rtol: float = EXACT_RTOL) -> Prepared:
    """Draw the noise and the data reference of ``problem`` and solve its exact PF-ODE."""
    mixture = problem.make()
    gen = torch.Generator().manual_seed(problem.seed)
    x_t = torch.randn(n, mixture.dim, generator=gen, dtype=torch.float64) * SIGMA_MAX
    data = mixture.sample(n, generator=torch.Generator().manual_seed(problem.seed + 10_000))
    t0 = time.perf_counter()
    exact, nfev = exact_endpoint(mixture, x_t, rtol=rtol)
    return Prepared(problem, mixture, MixtureDenoiser(mixture), x_t, exact, data, nfev, time.perf_counter() - t0)


def sw2(x: Tensor, data: Tensor, seed: int) -> float:
    return sliced_wasserstein(x, data, n_projections=N_PROJECTIONS, generator=torch.Generator().manual_seed(seed))


# -- the benchmark -------------------------------------------------------------------------------------------------
def select_problems(dims: Sequence[int], quick: bool = False) -> list[Problem]:
    """The benchmark problems of dimensions ``dims`` (``--quick``: ring2d and benchmark64 only)."""
    problems = [p for p in PROBLEMS if p.dim in dims and (not quick or p.name in QUICK_PROBLEMS)]
    if not problems:
        raise UserError(f"bench samplers: no problem has a dimension in {list(dims)} (have 2 and 64)")
    return problems


def run_benchmark(samplers: Sequence[str], nfes: Sequence[int], problems: Sequence[Problem], n: int,
                  rtol: float = EXACT_RTOL, log: Callable[[str], None] = print) -> dict:
    """Endpoint errors and SW2 of every (problem, sampler, NFE); see the module docstring."""
    parsed = [parse_sampler(s) for s in samplers]
    rows, info = [], {}
    for problem in problems:
        prep = prepare(problem, n, rtol)
        floor = sw2(prep.exact, prep.data, problem.seed)
        info[problem.name] = {"dim": problem.dim, "n_components": prep.mixture.n_components, "n": n,
                              "exact_nfev": prep.exact_nfev, "exact_seconds": round(prep.exact_seconds, 2),
                              "sw2_floor": floor}
        log(f"{problem.name}: exact PF-ODE {prep.exact_nfev} evaluations, {prep.exact_seconds:.1f} s, "
            f"SW2 floor {floor:.4f}")
        for name, schedule in parsed:
            t0 = time.perf_counter()
            for nfe in nfes:
                out = run_sampler(name, schedule, prep.denoise, prep.x_t, nfe)
                rows.append({"problem": problem.name, "dim": problem.dim, "sampler": name, "schedule": schedule,
                             "nfe": nfe, "error": None if out is None else endpoint_error(out, prep.exact),
                             "sw2": None if out is None else sw2(out, prep.data, problem.seed)})
            log(f"  {name}@{schedule}: {time.perf_counter() - t0:.1f} s")
    return {"protocol": protocol(n, nfes, rtol), "problems": info, "results": rows,
            "target": target_check(rows, problems)}


def protocol(n: int, nfes: Sequence[int], rtol: float) -> dict:
    return {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO, "n": n, "nfe": list(nfes),
            "exact": f"scipy DOP853 in u = ln sigma, rtol {rtol:g}, atol {rtol:g}, float64, then D(x; sigma_min)",
            "error": "mean over samples of ||x - x_exact||_2", "dtype": "float64",
            "sw2": f"sliced Wasserstein-2, {N_PROJECTIONS} fixed directions, vs n fresh data samples",
            "last_step": "every sampler's step to sigma = 0 returns its last denoiser output (counted in NFE)"}


def _lookup(rows: list[dict], problem: str, nfe: int) -> dict[str, float]:
    """{sampler@schedule: error} at (problem, nfe) for the runs that made that NFE."""
    return {f"{r['sampler']}@{r['schedule']}": r["error"] for r in rows
            if r["problem"] == problem and r["nfe"] == nfe and r["error"] is not None}


def target_check(rows: list[dict], problems: Sequence[Problem]) -> dict:
    """Per problem and NFE in TARGET_NFES: best sampler / dpmpp-2m error; per dimension: does it hold everywhere.

    The baseline is DPM-Solver++(2M) at the better of ``BASELINE_SCHEDULES``; its run on the tuned grid (if any) is
    reported beside it (``ratio_vs_tuned``) but is neither a baseline nor a candidate.
    """
    per_problem, per_dim = {}, {}
    for problem in problems:
        for nfe in TARGET_NFES:
            errs = _lookup(rows, problem.name, nfe)
            base = {k: errs[k] for k in (f"{BASELINE}@{s}" for s in BASELINE_SCHEDULES) if k in errs}
            others = {k: v for k, v in errs.items() if not k.startswith(BASELINE + "@")}
            if not base or not others:
                continue
            base_err = min(base.values())
            best = min(others, key=others.get)
            ratio = others[best] / base_err
            case = {"best": best, "error": others[best], "baseline": base_err, "ratio": ratio,
                    "holds": ratio <= TARGET_RATIO}
            tuned_base = errs.get(f"{BASELINE}@tuned")
            if tuned_base is not None:
                case.update(baseline_tuned=tuned_base, ratio_vs_tuned=others[best] / tuned_base)
            per_problem[f"{problem.name}@{nfe}"] = case
            per_dim.setdefault(str(problem.dim), []).append(ratio <= TARGET_RATIO)
    return {"rule": f"best error <= {TARGET_RATIO} x {BASELINE} (better of {', '.join(BASELINE_SCHEDULES)}) at NFE "
                    f"{list(TARGET_NFES)}", "cases": per_problem,
            "holds_by_dim": {d: all(v) for d, v in per_dim.items()}}


# -- lambda tuning -------------------------------------------------------------------------------------------------
def tune_lambda(nfes: Sequence[int], n: int, rtol: float = EXACT_RTOL, coarse: Sequence[float] | None = None,
                fine_step: float = 0.001, log: Callable[[str], None] = print) -> dict:
    """Per-NFE lambda of lambda-DDIM minimising the geometric-mean endpoint error on ``TUNING_PROBLEMS``."""
    coarse = list(coarse) if coarse is not None else [round(-0.04 + 0.004 * i, 4) for i in range(13)]
    preps = [prepare(p, n, rtol) for p in TUNING_PROBLEMS]
    cache: dict[tuple[int, float], float] = {}

    def score(nfe: int, lam: float) -> float:
        key = (nfe, round(lam, 6))
        if key not in cache:
            errs = [endpoint_error(run_sampler("lambda-ddim", "karras", p.denoise, p.x_t, nfe, lam=lam),
                                   p.exact) for p in preps]
            cache[key] = math.exp(sum(math.log(e) for e in errs) / len(errs))
        return cache[key]

    table, details = {}, {}
    for nfe in nfes:
        best = min(coarse, key=lambda lam: score(nfe, lam))
        fine = [round(best + fine_step * k, 6) for k in range(-4, 5)]
        best = min(fine, key=lambda lam: score(nfe, lam))
        table[nfe] = best
        details[str(nfe)] = {"lambda": best, "geomean_error": score(nfe, best), "ddim_error": score(nfe, 0.0),
                             "grid": {str(lam): err for (k, lam), err in sorted(cache.items()) if k == nfe}}
        log(f"NFE {nfe}: lambda {best:+.3f}, error {score(nfe, best):.4g} (DDIM {score(nfe, 0.0):.4g})")
    return {"protocol": {**protocol(n, nfes, rtol), "tuning_problems": [p.name for p in TUNING_PROBLEMS],
                         "objective": "geometric mean over the tuning problems of the endpoint error",
                         "schedule": "karras", "coarse_grid": coarse, "fine_step": fine_step},
            "lambda_by_nfe": table, "details": details}


# -- schedule tuning -----------------------------------------------------------------------------------------------
SCHEDULE_TUNING_SAMPLERS = ("ipndm", "lambda-ddim", "dpmpp-2m")
SCHEDULE_TUNING_NFES = (3, 4, 5, 6, 7, 8, 9, 10)
# Start grids: the optimiser begins from whichever of these has the lowest objective.
TUNING_STARTS = (("karras", 3.0), ("karras", 5.0), ("karras", 7.0), ("karras", 10.0), ("logsnr", 7.0))
# Rounds of (Powell, Nelder-Mead), each run capped at this many evaluations; a round gaining less than
# ROUND_GAIN in ln(objective) ends the search (Nelder-Mead often stalls where Powell still moves, and vice versa).
MAX_ROUNDS, MAXFEV, ROUND_GAIN = 2, 700, 1e-4
# Smallest ln-sigma step, as a fraction of ln(sigma_max/sigma_min): without it dpmpp-2m's optimum at NFE 9 merges two
# levels (a near-zero step that buys a finite-difference derivative), a degenerate grid no stored table should hold.
MIN_STEP = 0.01
T_DECIMALS = 6


def grid_from_logits(z: np.ndarray) -> Tensor:
    """``[sigma_max, ..., sigma_min, 0]`` whose ln-sigma decrements are ``L (MIN_STEP + (1 - k MIN_STEP) softmax([0,
    z]))``, L = ln(sigma_max/sigma_min), k = NFE - 1 decrements: any real ``z`` (NFE - 2 values) gives a strictly
    decreasing grid with fixed ends and no two levels closer than MIN_STEP L."""
    logits = np.concatenate([[0.0], z])
    w = np.exp(logits - logits.max())
    frac = MIN_STEP + (1 - len(w) * MIN_STEP) * w / w.sum()
    u = math.log(SIGMA_MAX) - math.log(SIGMA_MAX / SIGMA_MIN) * np.cumsum(frac)
    sigmas = np.concatenate([[SIGMA_MAX], np.exp(u[:-1]), [SIGMA_MIN, 0.0]])
    return torch.from_numpy(sigmas)


def logits_from_grid(sigmas: Tensor) -> np.ndarray:
    """The ``z`` of ``grid_from_logits`` for a grid (up to the softmax's shift): ``z_j = ln(w_{j+1} / w_0)`` with
    ``w = d/L - MIN_STEP`` for the ln-sigma decrements d (a decrement below MIN_STEP L is taken at the floor)."""
    d = -np.diff(np.log(sigmas[:-1].numpy())) / math.log(SIGMA_MAX / SIGMA_MIN)
    w = np.maximum(d - MIN_STEP, 1e-9)
    return np.log(w[1:]) - np.log(w[0])


def interior_positions(sigmas: Tensor) -> tuple[float, ...]:
    """``t_i = ln(sigma_i / sigma_min) / ln(sigma_max / sigma_min)`` of the interior levels, rounded (the stored
    form of ``fastdiffusion.samplers.tuned``); raises if rounding merges two levels."""
    t = tuple(round(math.log(s / SIGMA_MIN) / math.log(SIGMA_MAX / SIGMA_MIN), T_DECIMALS)
              for s in sigmas[1:-2].tolist())
    if any(a <= b for a, b in zip((1.0, *t), (*t, 0.0), strict=True)):
        raise RuntimeError(f"tuned positions not strictly decreasing after rounding: {t}")
    return t


def grid_from_positions(t: Sequence[float]) -> Tensor:
    """``[sigma_max, sigma_min (sigma_max/sigma_min)^{t_i}..., sigma_min, 0]``."""
    inner = [SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** v for v in t]
    return torch.tensor([SIGMA_MAX, *inner, SIGMA_MIN, 0.0], dtype=torch.float64)


def _minimise(objective: Callable[[np.ndarray], float], z: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Rounds of Powell then adaptive Nelder-Mead from ``z``; returns (best z, its objective, evaluations)."""
    from scipy.optimize import minimize

    best, evals = objective(z), 1
    for _ in range(MAX_ROUNDS):
        start = best
        for method, opts in (("Powell", {"xtol": 1e-3, "ftol": 1e-5}),
                             ("Nelder-Mead", {"xatol": 1e-3, "fatol": 1e-5, "adaptive": True})):
            res = minimize(objective, z, method=method, options={**opts, "maxfev": MAXFEV})
            evals += res.nfev
            if res.fun < best:
                z, best = res.x, float(res.fun)
        if best > start - ROUND_GAIN:
            break
    return z, best, evals


def tune_schedule(samplers: Sequence[str], nfes: Sequence[int], n: int, rtol: float = EXACT_RTOL,
                  log: Callable[[str], None] = print) -> dict:
    """Per sampler and NFE, the grid minimising the geometric-mean endpoint error on ``TUNING_PROBLEMS``."""
    preps = [prepare(p, n, rtol) for p in TUNING_PROBLEMS]

    def geomean(name: str, nfe: int, sigmas: Tensor) -> float:
        errs = [endpoint_error(run_on_grid(name, p.denoise, p.x_t, sigmas, nfe), p.exact) for p in preps]
        return math.exp(sum(math.log(e) for e in errs) / len(errs))

    def log_objective(name: str, nfe: int, z: np.ndarray) -> float:
        value = geomean(name, nfe, grid_from_logits(z))
        return math.log(value) if math.isfinite(value) else math.inf  # a degenerate grid loses, not crashes

    table: dict[str, dict[int, tuple[float, ...]]] = {}
    details: dict[str, dict] = {}
    for name in samplers:
        if get_sampler(name).steps(5) != 5:
            raise UserError(f"--tune-schedule: '{name}' does not make one network call per noise level")
        for nfe in nfes:
            t0 = time.perf_counter()
            starts = {f"{s}@rho{r:g}": geomean(name, nfe, make_sigmas(s, nfe, SIGMA_MIN, SIGMA_MAX, r))
                      for s, r in TUNING_STARTS}
            start = min(starts, key=starts.get)
            schedule, rho = start.split("@rho")
            z0 = logits_from_grid(make_sigmas(schedule, nfe, SIGMA_MIN, SIGMA_MAX, float(rho)))
            z, _, evals = _minimise(lambda z, name=name, nfe=nfe: log_objective(name, nfe, z), z0)
            t = interior_positions(grid_from_logits(z))
            error = geomean(name, nfe, grid_from_positions(t))
            table.setdefault(name, {})[nfe] = t
            details.setdefault(name, {})[str(nfe)] = {
                "positions": list(t), "sigmas": grid_from_positions(t).tolist(), "geomean_error": error,
                "start": start, "start_errors": starts, "evaluations": evals,
                "seconds": round(time.perf_counter() - t0, 1)}
            log(f"{name} NFE {nfe}: {starts[start]:.4g} ({start}) -> {error:.4g} in {evals} evaluations")
    return {"protocol": {**protocol(n, nfes, rtol), "tuning_problems": [p.name for p in TUNING_PROBLEMS],
                         "objective": "geometric mean over the tuning problems of the endpoint error",
                         "parameterisation": f"ln-sigma decrements L ({MIN_STEP:g} + (1 - (NFE - 1) {MIN_STEP:g}) "
                                             "softmax([0, z])), L = ln(sigma_max/sigma_min)",
                         "starts": [f"{s}@rho{r:g}" for s, r in TUNING_STARTS],
                         "optimiser": f"up to {MAX_ROUNDS} rounds of scipy Powell (xtol 1e-3, ftol 1e-5) then "
                                      f"Nelder-Mead (adaptive, xatol 1e-3, fatol 1e-5), {MAXFEV} evaluations each; "
                                      f"stop when a round gains < {ROUND_GAIN:g} in ln(objective)",
                         "stored": f"interior t_i = ln(sigma_i/sigma_min)/ln(sigma_max/sigma_min), {T_DECIMALS} "
                                   "decimals; geomean_error is that of the stored grid"},
            "positions": table, "details": details}


# -- outputs -------------------------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def markdown(result: dict) -> str:
    """Tables of endpoint error and SW2 per problem (rows: sampler, columns: NFE) and the target check."""
    rows, nfes = result["results"], result["protocol"]["nfe"]
    lines = ["# EDM-family samplers on exact-score Gaussian mixtures", "",
             f"Command: `{result.get('command', '')}`; commit {result.get('git_commit', '?')}; "
             f"{result.get('device', '')}; {result.get('timestamp', '')}.", "",
             "Protocol: " + "; ".join(f"{k}: {v}" for k, v in result["protocol"].items()) + ".", ""]
    for metric, title in (("error", "endpoint error (mean L2 to the exact PF-ODE endpoint)"),
                          ("sw2", "sliced W2 to data samples")):
        lines += [f"## {title}", ""]
        for problem, info in result["problems"].items():
            extra = f", SW2 floor {info['sw2_floor']:.4f}" if metric == "sw2" else ""
            lines += [f"### {problem} (D = {info['dim']}, {info['n_components']} modes, n = {info['n']}{extra})", "",
                      "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                      "|---|" + "---|" * len(nfes)]
            keys = dict.fromkeys(f"{r['sampler']}@{r['schedule']}" for r in rows if r["problem"] == problem)
            for key in keys:
                vals = {r["nfe"]: r[metric] for r in rows
                        if r["problem"] == problem and f"{r['sampler']}@{r['schedule']}" == key}
                lines.append(f"| {key} | " + " | ".join(_fmt(vals.get(k)) for k in nfes) + " |")
            lines.append("")
    target = result.get("target", {})
    lines += ["## Target", "", target.get("rule", ""), "",
              "| case | best | error | dpmpp-2m | ratio | holds | dpmpp-2m@tuned | ratio vs 2M@tuned |",
              "|---|---|---|---|---|---|---|---|"]
    for case, c in target.get("cases", {}).items():
        lines.append(f"| {case} | {c['best']} | {c['error']:.3g} | {c['baseline']:.3g} | {c['ratio']:.2f} | "
                     f"{'yes' if c['holds'] else 'no'} | {_fmt(c.get('baseline_tuned'))} | "
                     f"{_fmt(c.get('ratio_vs_tuned'))} |")
    lines += ["", "Holds by dimension: " + ", ".join(f"{d}-D: {'yes' if v else 'no'}"
                                                      for d, v in target.get("holds_by_dim", {}).items()), ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Log-log endpoint error vs NFE, one panel per problem, one line per sampler."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(result["problems"])
    keys = list(dict.fromkeys(f"{r['sampler']}@{r['schedule']}" for r in result["results"]))
    colors, styles = plt.get_cmap("tab20").colors, ("-", "--", ":", "-.")
    cols = min(2, len(problems))
    rows_n = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 4.5 * rows_n), squeeze=False, constrained_layout=True)
    for ax, problem in zip(axes.ravel(), problems, strict=False):
        rows = [r for r in result["results"] if r["problem"] == problem and r["error"] is not None]
        for j, key in enumerate(keys):
            pts = sorted((r["nfe"], r["error"]) for r in rows if f"{r['sampler']}@{r['schedule']}" == key)
            if pts:
                ax.loglog(*zip(*pts, strict=True), marker="o", ms=3, color=colors[(2 * j) % 20 + (j >= 10)],
                          linestyle=styles[j % len(styles)], label=key)
        ax.set_title(f"{problem} (D = {result['problems'][problem]['dim']})")
        ax.set_xlabel("NFE")
        ax.set_ylabel("endpoint error (mean L2 to exact PF-ODE endpoint)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.ravel()[len(problems):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


# -- command line --------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samplers", help="comma list of name or name@schedule (default: every deterministic "
                   "EDM-family sampler at its default schedule)")
    p.add_argument("--nfe", type=_ints, help=f"comma list (default {','.join(map(str, NFES))})")
    p.add_argument("--dims", type=_ints, default=[2, 64], help="mixture dimensions to run: 2, 64 (default both)")
    p.add_argument("--n", type=int, help="samples per problem (default 1000; 64 with --quick)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/samplers"), help="output directory")
    p.add_argument("--quick", action="store_true", help="a smoke run: n 64, NFE 3,5,10, ring2d and benchmark64 "
                   "only, exact rtol 1e-8")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the work is many small "
                   "tensor ops, which extra threads slow down on a shared machine)")
    p.add_argument("--tune-lambda", action="store_true", help="tune lambda-DDIM's lambda per NFE on separate "
                   "tuning mixtures and write lambda_tuning.json")
    p.add_argument("--tune-schedule", action="store_true", help="tune the 'tuned' schedule's noise levels per "
                   f"sampler ({','.join(SCHEDULE_TUNING_SAMPLERS)}, or --samplers) and NFE (default "
                   f"{','.join(map(str, SCHEDULE_TUNING_NFES))}) on separate tuning mixtures and write "
                   "schedule_tuning.json")


def main(args: argparse.Namespace) -> dict:
    quick = args.quick
    nfes = args.nfe or list(QUICK_NFES if quick else NFES)
    n = args.n or (64 if quick else 1000)
    rtol = 1e-8 if quick else EXACT_RTOL
    if n < 2:
        raise UserError(f"--n must be >= 2, got {n}")
    if any(k < 1 for k in nfes):
        raise UserError(f"--nfe values must be >= 1, got {nfes}")
    torch.set_num_threads(max(1, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.tune_lambda:
        result = {**provenance("cpu"), **tune_lambda(nfes, n, rtol)}
        result["seconds"] = round(time.perf_counter() - started, 1)
        write_json(args.out / "lambda_tuning.json", result)
        print("LAMBDA_BY_NFE =", json.dumps({int(k): v for k, v in result["lambda_by_nfe"].items()}))
        return result
    if args.tune_schedule:
        names = args.samplers.split(",") if args.samplers else list(SCHEDULE_TUNING_SAMPLERS)
        result = {**provenance("cpu"), **tune_schedule(names, args.nfe or list(SCHEDULE_TUNING_NFES), n, rtol)}
        result["seconds"] = round(time.perf_counter() - started, 1)
        write_json(args.out / "schedule_tuning.json", result)
        print("TUNED_T =", repr(result["positions"]))
        return result
    samplers = args.samplers.split(",") if args.samplers else default_samplers()
    result = {**provenance("cpu"), **run_benchmark(samplers, nfes, select_problems(args.dims, quick), n, rtol)}
    result["quick"] = quick
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out / "results.json", result)
    atomic_write_bytes(args.out / "results.md", markdown(result).encode())
    plot(result, args.out / "error_vs_nfe.png")
    print(f"wrote {args.out / 'results.json'}, results.md, error_vs_nfe.png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fastdiffusion.bench.samplers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
