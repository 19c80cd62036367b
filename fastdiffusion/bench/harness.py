"""The sampler-benchmark harness: a problem prepared once per family, counted runs of samplers, measured result rows."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.gmm import GaussianMixture
from ..errors import UserError
from ..samplers import get_sampler, make_sigmas
from ..samplers.counted import CountedModel, run_counted
from .distances import endpoint_error, mmd, sw2
from .problems import Family, Problem

RHO = 7.0
EXACT_RTOL = 1e-10  # of the exact PF-ODE solves (DOP853 rtol = atol)


def parse_sampler(item: str) -> tuple[str, str]:
    """``name`` or ``name@schedule`` -> (name, schedule); the default schedule is the sampler's own."""
    name, _, schedule = item.partition("@")
    return name, schedule or get_sampler(name).schedule


def select_samplers(family: Family, items: Sequence[str]) -> list[tuple[str, str]]:
    """``parse_sampler`` of every item, each checked to be a sampler of ``family``."""
    out = [parse_sampler(item) for item in items]
    for name, _ in out:
        if get_sampler(name).family != family.process.family:
            raise UserError(f"bench: '{name}' is a {get_sampler(name).family} sampler, not a "
                            f"{family.process.family} one")
    return out


@dataclass
class Prepared:
    """A problem posed to a family: its exact model, start states, the exact endpoints of the first ``len(exact)``
    of them and a data draw (the reference of the distribution metrics)."""

    problem: Problem
    mixture: GaussianMixture
    model: Callable[[Tensor, Tensor], Tensor]
    start: Tensor
    exact: Tensor
    data: Tensor
    exact_nfev: int
    exact_seconds: float


def prepare(family: Family, problem: Problem, n: int, n_exact: int, rtol: float = EXACT_RTOL,
            device: str = "cpu") -> Prepared:
    """Draw ``n`` start states and ``n`` data points of ``problem`` and solve the exact PF-ODE of the first
    ``n_exact`` (on the CPU); the draws are placed on ``device``."""
    mixture = problem.make()
    model = family.model(mixture)
    gen = torch.Generator().manual_seed(problem.seed)
    noise = torch.randn(n, mixture.dim, generator=gen, dtype=torch.float64)
    t_max = torch.tensor(family.process.sampling_range()[1], dtype=torch.float64)
    start = family.process.prior(noise, t_max, lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype))
    data = mixture.sample(n, generator=torch.Generator().manual_seed(problem.seed + 10_000))
    t0 = time.perf_counter()
    exact, nfev = family.exact(model, start[:n_exact], rtol)
    seconds = time.perf_counter() - t0
    return Prepared(problem, mixture, model, start.to(device), exact.to(device), data.to(device), nfev, seconds)


def grid(family: Family, name: str, schedule: str, nfe: int) -> Tensor:
    """The sampler's ``schedule`` over the family's range with the levels that make ``nfe`` calls."""
    return make_sigmas(schedule, get_sampler(name).steps(nfe), *family.process.sampling_range(), RHO)


def run(family: Family, prep: Prepared, name: str, sigmas: Tensor, nfe: int, rows: int, seed: int,
        **hyper: object) -> Tensor:
    """Data part of the sampler's final state from the first ``rows`` start states on ``sigmas``, through the counted
    run (exactly ``nfe`` calls); a stochastic sampler draws its noise from ``seed``."""
    spec = get_sampler(name)
    gen = torch.Generator().manual_seed(seed)
    noise = ((lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device))
             if spec.stochastic else None)
    model = CountedModel(prep.model, process=family.process)
    out = run_counted(spec, model, prep.start[:rows].clone(), sigmas, nfe, noise=noise, **hyper)
    return family.process.data_part(out)


def score(prep: Prepared, x: Tensor, metric: str, sw2_seed: int = 0) -> float:
    """``metric`` of samples ``x`` (inf if any is not finite): ``error`` to the exact endpoints of its first rows,
    ``sw2`` to the data draw, ``mmd`` to the mixture."""
    if not bool(torch.isfinite(x).all()):
        return math.inf
    if metric == "error":
        return endpoint_error(x[:len(prep.exact)], prep.exact)
    if metric == "sw2":
        return sw2(x, prep.data, sw2_seed)
    if metric == "mmd":
        return mmd(x, prep.mixture)
    raise ValueError(f"unknown metric '{metric}'")


def runnable_nfe(name: str, nfe: int, round_down: bool) -> int | None:
    """``nfe`` if the sampler makes it, else (``round_down``) the largest NFE below it that it makes, else None."""
    spec = get_sampler(name)
    for k in range(nfe, 0, -1) if round_down else (nfe,):
        try:
            spec.steps(k)
            return k
        except UserError:
            continue
    return None


@dataclass(frozen=True)
class Benchmark:
    """One entry's protocol: the family, the metrics of a run (table order) and those plotted, the NFE rule, the seed
    of the SW2 directions (None: the problem's seed) and the per-problem reference values ``floors(prep)``."""

    title: str
    family: Family
    metrics: tuple[str, ...]
    plotted: tuple[str, ...]
    round_down: bool
    sw2_seed: int | None
    floors: Callable[[Prepared], dict]


def measure(bench: Benchmark, prep: Prepared, name: str, schedule: str, nfe: int) -> dict:
    """The result row of one sampler at one NFE on a prepared problem (metrics None where the run or metric does
    not apply: an NFE the sampler cannot make, the endpoint error of a stochastic sampler)."""
    spec, problem = get_sampler(name), prep.problem
    nfe_run = runnable_nfe(name, nfe, bench.round_down)
    row = {"problem": problem.name, "dim": problem.dim, "sampler": name, "schedule": schedule, "nfe": nfe,
           "nfe_run": nfe_run, "stochastic": spec.stochastic}
    if nfe_run is None:
        return {**row, **dict.fromkeys(bench.metrics)}
    x = run(bench.family, prep, name, grid(bench.family, name, schedule, nfe_run), nfe_run, len(prep.start),
            problem.seed)
    sw2_seed = problem.seed if bench.sw2_seed is None else bench.sw2_seed
    return {**row, **{m: None if m == "error" and spec.stochastic else score(prep, x, m, sw2_seed)
                      for m in bench.metrics}}


def run_benchmark(bench: Benchmark, samplers: Sequence[tuple[str, str]], nfes: Sequence[int],
                  problems: Sequence[Problem], n: int, n_exact: int, rtol: float = EXACT_RTOL, device: str = "cpu",
                  log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """Per-problem information and the rows of every (problem, sampler, NFE)."""
    info, rows = {}, []
    for problem in problems:
        prep = prepare(bench.family, problem, n, n_exact, rtol, device)
        floors = bench.floors(prep)
        info[problem.name] = {"dim": problem.dim, "n_components": prep.mixture.n_components, "n": n,
                              "n_exact": n_exact, "exact_nfev": prep.exact_nfev,
                              "exact_seconds": round(prep.exact_seconds, 2), **floors}
        log(f"{problem.name}: exact PF-ODE {prep.exact_nfev} evaluations, {prep.exact_seconds:.1f} s; "
            + ", ".join(f"{k} {v:.4g}" for k, v in floors.items()))
        for name, schedule in samplers:
            t0 = time.perf_counter()
            rows += [measure(bench, prep, name, schedule, nfe) for nfe in nfes]
            log(f"  {name}@{schedule}: {time.perf_counter() - t0:.1f} s")
    return info, rows
