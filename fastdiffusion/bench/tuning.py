"""Tuning on mixtures kept apart from the benchmark's: per-NFE lambda of the PSLD splitting and conjugate samplers
(docs/benchmarks.md). EDM-family grids and lambda-DDIM's lambda are fitted per model instead (``samplers.tuning``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from ..samplers import get_sampler
from .harness import Prepared, grid, parse_sampler, prepare, run, score
from .problems import PSLD_FAMILY, PSLD_TUNING, Family


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


# -- lambda of the PSLD splitting / conjugate samplers ------------------------------------------------------------
PSLD_LAMBDAS = (-3.0, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
PSLD_LAMBDAS_S = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 14.0)
PSLD_TUNED = {"psld-conj": ("lam", PSLD_LAMBDAS), "csps-d": ("lam", PSLD_LAMBDAS),
              "sps-s": ("lam_s", PSLD_LAMBDAS_S), "csps-s": ("lam_s", PSLD_LAMBDAS_S)}


def _hyper_objective(family: Family, preps: Sequence[Prepared], item: str, nfe: int, **hyper: object) -> float:
    """``objective`` of the sampler ``item`` (``name[@schedule]``) on its grid for ``nfe`` with ``hyper``."""
    name, schedule = parse_sampler(item)
    return objective(family, preps, name, grid(family, name, schedule, nfe), nfe, **hyper)


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
