"""Tuning on mixtures kept apart from the benchmark's: per-NFE lambda of lambda-DDIM and of the PSLD splitting and
conjugate samplers, and the noise levels of the ``tuned`` schedule (docs/benchmarks.md)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..samplers import get_sampler, make_sigmas
from ..samplers.tuning import MIN_STEP, levels_from_logits, logits_from_levels
from .edm_exact import SIGMA_MAX, SIGMA_MIN
from .harness import EXACT_RTOL, Prepared, grid, parse_sampler, prepare, run, score
from .problems import EDM_FAMILY, EDM_TUNING, PSLD_FAMILY, PSLD_TUNING, Family


# -- the objective -------------------------------------------------------------------------------------------------
def objective(family: Family, preps: Sequence[Prepared], name: str, sigmas: Tensor, nfe: int,
              **hyper: object) -> float:
    """Deterministic sampler: geometric mean over ``preps`` of the endpoint error; stochastic: mean MMD."""
    if get_sampler(name).stochastic:
        mmds = [score(p, run(family, p, name, sigmas, nfe, len(p.start), 0, **hyper), "mmd") for p in preps]
        return sum(mmds) / len(mmds)
    errors = [score(p, run(family, p, name, sigmas, nfe, len(p.exact), 0, **hyper), "error") for p in preps]
    return math.exp(sum(math.log(max(e, 1e-300)) for e in errors) / len(errors))


def grid_search(value: Callable[[float], float], grid_values: Sequence[float], refine_step: float | None = None
                ) -> tuple[float, dict[float, float]]:
    """The minimiser of ``value`` over ``grid_values`` (then, with ``refine_step``, over its +-4 such steps) and every
    value computed, keyed by the point rounded to 6 decimals."""
    values: dict[float, float] = {}

    def cached(v: float) -> float:
        if round(v, 6) not in values:
            values[round(v, 6)] = value(v)
        return values[round(v, 6)]

    best = min(grid_values, key=cached)
    if refine_step is not None:
        best = min([round(best + refine_step * k, 6) for k in range(-4, 5)], key=cached)
    return best, values


# -- lambda of lambda-DDIM (EDM family) and of the PSLD splitting / conjugate samplers -----------------------------
LAMBDA_DDIM = "lambda-ddim@karras"
LAMBDA_COARSE = tuple(round(-0.04 + 0.004 * i, 4) for i in range(13))
LAMBDA_FINE_STEP = 0.001
PSLD_LAMBDAS = (-3.0, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
PSLD_LAMBDAS_S = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 14.0)
PSLD_TUNED = {"psld-conj": ("lam", PSLD_LAMBDAS), "csps-d": ("lam", PSLD_LAMBDAS),
              "sps-s": ("lam_s", PSLD_LAMBDAS_S), "csps-s": ("lam_s", PSLD_LAMBDAS_S)}


def _hyper_objective(family: Family, preps: Sequence[Prepared], item: str, nfe: int, **hyper: object) -> float:
    """``objective`` of the sampler ``item`` (``name[@schedule]``) on its grid for ``nfe`` with ``hyper``."""
    name, schedule = parse_sampler(item)
    return objective(family, preps, name, grid(family, name, schedule, nfe), nfe, **hyper)


def tune_lambda(nfes: Sequence[int], n: int, rtol: float = EXACT_RTOL, coarse: Sequence[float] = LAMBDA_COARSE,
                fine_step: float = LAMBDA_FINE_STEP, log: Callable[[str], None] = print) -> dict:
    """Per-NFE lambda of lambda-DDIM minimising the geometric-mean endpoint error on ``EDM_TUNING``."""
    preps = [prepare(EDM_FAMILY, p, n, n, rtol) for p in EDM_TUNING]
    table, details = {}, {}
    for nfe in nfes:
        best, values = grid_search(
            lambda lam, nfe=nfe: _hyper_objective(EDM_FAMILY, preps, LAMBDA_DDIM, nfe, lam=lam), coarse, fine_step)
        table[nfe] = best
        details[str(nfe)] = {"lambda": best, "geomean_error": values[best], "ddim_error": values[0.0],
                             "grid": {str(lam): err for lam, err in sorted(values.items())}}
        log(f"NFE {nfe}: lambda {best:+.3f}, error {values[best]:.4g} (DDIM {values[0.0]:.4g})")
    return {"protocol": {"tuning_problems": [p.name for p in EDM_TUNING],
                         "objective": "geometric mean over the tuning problems of the endpoint error",
                         "schedule": LAMBDA_DDIM.partition("@")[2], "coarse_grid": list(coarse),
                         "fine_step": fine_step},
            "lambda_by_nfe": table, "details": details}


def tune_psld(nfes: Sequence[int], n: int, n_exact: int, device: str = "cpu", log: Callable[[str], None] = print
              ) -> dict:
    """Per-NFE lambda (psld-conj, csps-d: geometric-mean endpoint error) and lambda_s (sps-s, csps-s: mean MMD) on
    ``PSLD_TUNING``."""
    preps = [prepare(PSLD_FAMILY, p, n, n_exact, device=device) for p in PSLD_TUNING]
    tables: dict[str, dict[int, float]] = {}
    details: dict[str, dict] = {}
    for name, (key, values) in PSLD_TUNED.items():
        tables[name], details[name] = {}, {}
        for nfe in nfes:
            best, scores = grid_search(
                lambda v, name=name, key=key, nfe=nfe: _hyper_objective(PSLD_FAMILY, preps, name, nfe, **{key: v}),
                values)
            tables[name][nfe], details[name][str(nfe)] = best, {str(k): v for k, v in scores.items()}
            log(f"tune {name} NFE {nfe}: {key} = {best} ({scores[best]:.4g})")
    return {"problems": [p.name for p in PSLD_TUNING], "tables": tables, "scores": details,
            "objective": {"deterministic": "geometric mean of the endpoint error", "stochastic": "mean MMD"}}


# -- the tuned schedule (EDM family) -------------------------------------------------------------------------------
SCHEDULE_TUNING_SAMPLERS = ("ipndm", "lambda-ddim", "dpmpp-2m")
SCHEDULE_TUNING_NFES = (3, 4, 5, 6, 7, 8, 9, 10)
# Start grids: the optimiser begins from whichever of these has the lowest objective.
TUNING_STARTS = (("karras", 3.0), ("karras", 5.0), ("karras", 7.0), ("karras", 10.0), ("logsnr", 7.0))
# Rounds of (Powell, Nelder-Mead), each run capped at this many evaluations; a round gaining less than
# ROUND_GAIN in ln(objective) ends the search (Nelder-Mead often stalls where Powell still moves, and vice versa).
MAX_ROUNDS, MAXFEV, ROUND_GAIN = 2, 700, 1e-4
# Smallest ln-sigma step, as a fraction of ln(sigma_max/sigma_min): without it dpmpp-2m's optimum at NFE 9 merges two
# levels (a near-zero step that buys a finite-difference derivative), a degenerate grid no stored table should hold.
T_DECIMALS = 6


def grid_from_logits(z: np.ndarray) -> Tensor:
    """``levels_from_logits`` on EDM's range, followed by 0."""
    return torch.cat([levels_from_logits(z, SIGMA_MIN, SIGMA_MAX), torch.zeros(1, dtype=torch.float64)])


def logits_from_grid(sigmas: Tensor) -> np.ndarray:
    """The ``z`` of ``grid_from_logits`` for a grid ending in 0."""
    return logits_from_levels(sigmas[:-1], SIGMA_MIN, SIGMA_MAX)


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


def _minimise(loss: Callable[[np.ndarray], float], z: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Rounds of Powell then adaptive Nelder-Mead from ``z``; returns (best z, its loss, evaluations)."""
    from scipy.optimize import minimize

    best, evals = loss(z), 1
    for _ in range(MAX_ROUNDS):
        start = best
        for method, opts in (("Powell", {"xtol": 1e-3, "ftol": 1e-5}),
                             ("Nelder-Mead", {"xatol": 1e-3, "fatol": 1e-5, "adaptive": True})):
            res = minimize(loss, z, method=method, options={**opts, "maxfev": MAXFEV})
            evals += res.nfev
            if res.fun < best:
                z, best = res.x, float(res.fun)
        if best > start - ROUND_GAIN:
            break
    return z, best, evals


def tune_schedule(samplers: Sequence[str], nfes: Sequence[int], n: int, rtol: float = EXACT_RTOL,
                  log: Callable[[str], None] = print) -> dict:
    """Per sampler and NFE, the grid minimising the geometric-mean endpoint error on ``EDM_TUNING``."""
    preps = [prepare(EDM_FAMILY, p, n, n, rtol) for p in EDM_TUNING]

    def geomean(name: str, nfe: int, sigmas: Tensor) -> float:
        return objective(EDM_FAMILY, preps, name, sigmas, nfe)

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
    return {"protocol": {"tuning_problems": [p.name for p in EDM_TUNING],
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
