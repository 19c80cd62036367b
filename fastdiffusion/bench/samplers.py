"""``fastdiffusion bench samplers``: EDM-family samplers against the exact PF-ODE of Gaussian mixtures (protocol:
docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..cli_args import add_hf_tolerance_argument, positive_int
from ..errors import UserError
from ..samplers import deterministic_edm_samplers
from . import model_samplers, report
from .cli import int_list
from .distances import N_PROJECTIONS, sw2
from .edm_exact import SIGMA_MAX, SIGMA_MIN
from .harness import EXACT_RTOL, RHO, Benchmark, run_benchmark, select_samplers
from .problems import EDM_FAMILY, EDM_PROBLEMS, EDM_QUICK, Problem
from .provenance import provenance

NFES = (3, 4, 5, 6, 8, 10, 15, 20, 35, 50, 100)
QUICK_NFES = (3, 5, 10)
TARGET_NFES = (5, 10)
TARGET_RATIO = 0.5
BASELINE = "dpmpp-2m"
BASELINE_SCHEDULES = ("logsnr", "karras")
# Schedule variants run by default besides every sampler's own schedule (the baseline on karras too, so the target is
# checked against DPM-Solver++(2M)'s better schedule).
VARIANTS = ("dpmpp-2m@karras", "ipndm@logsnr")

BENCHMARK = Benchmark(
    "EDM-family samplers on exact-score Gaussian mixtures", EDM_FAMILY, metrics=("error", "sw2"), plotted=("error",),
    round_down=False, sw2_seed=None,  # an NFE a sampler cannot make is n/a; SW2 directions from the problem's seed
    floors=lambda prep: {"sw2_floor": sw2(prep.exact, prep.data, prep.problem.seed)})


def default_samplers() -> list[str]:
    """Every registered deterministic EDM-family sampler at its default schedule, plus ``VARIANTS``."""
    names = deterministic_edm_samplers()
    return names + [v for v in VARIANTS if v.partition("@")[0] in names]


def select_problems(dims: Sequence[int], quick: bool = False) -> list[Problem]:
    """The benchmark problems of dimensions ``dims`` (``--quick``: ring2d and benchmark64 only)."""
    problems = [p for p in EDM_PROBLEMS if p.dim in dims and (not quick or p.name in EDM_QUICK)]
    if not problems:
        raise UserError(f"bench samplers: no problem has a dimension in {list(dims)} (have 2 and 64)")
    return problems


def protocol(n: int, nfes: Sequence[int], rtol: float) -> dict:
    """The protocol as recorded in every result JSON of this entry."""
    return {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO, "n": n, "nfe": list(nfes),
            "exact": f"scipy DOP853 in u = ln sigma, rtol {rtol:g}, atol {rtol:g}, float64, then D(x; sigma_min)",
            "error": "mean over samples of ||x - x_exact||_2", "dtype": "float64",
            "sw2": f"sliced Wasserstein-2, {N_PROJECTIONS} fixed directions, vs n fresh data samples",
            "last_step": "every sampler's step to sigma = 0 returns its last denoiser output (counted in NFE)"}


def target_check(rows: list[dict], problems: Sequence[Problem]) -> dict:
    """Per problem and NFE in TARGET_NFES: best sampler / dpmpp-2m error; per dimension: does it hold everywhere.

    The baseline is DPM-Solver++(2M) at the better of ``BASELINE_SCHEDULES``.
    """
    per_problem, per_dim = {}, {}
    for problem in problems:
        for nfe in TARGET_NFES:
            errs = {report.label(r): r["error"] for r in rows
                    if r["problem"] == problem.name and r["nfe"] == nfe and r["error"] is not None}
            base = {k: errs[k] for k in (f"{BASELINE}@{s}" for s in BASELINE_SCHEDULES) if k in errs}
            others = {k: v for k, v in errs.items() if not k.startswith(BASELINE + "@")}
            if not base or not others:
                continue
            base_err = min(base.values())
            best = min(others, key=others.get)
            ratio = others[best] / base_err
            case = {"best": best, "error": others[best], "baseline": base_err, "ratio": ratio,
                    "holds": ratio <= TARGET_RATIO}
            per_problem[f"{problem.name}@{nfe}"] = case
            per_dim.setdefault(str(problem.dim), []).append(ratio <= TARGET_RATIO)
    return {"rule": f"best error <= {TARGET_RATIO} x {BASELINE} (better of {', '.join(BASELINE_SCHEDULES)}) at NFE "
                    f"{list(TARGET_NFES)}", "cases": per_problem,
            "holds_by_dim": {d: all(v) for d, v in per_dim.items()}}


def target_lines(target: dict) -> list[str]:
    """The markdown of ``target_check``'s result."""
    lines = ["## Target", "", target["rule"], "",
             "| case | best | error | dpmpp-2m | ratio | holds |", "|---|---|---|---|---|---|"]
    for case, c in target["cases"].items():
        lines.append(f"| {case} | {c['best']} | {c['error']:.3g} | {c['baseline']:.3g} | {c['ratio']:.2f} | "
                     f"{'yes' if c['holds'] else 'no'} |")
    return [*lines, "", "Holds by dimension: " + ", ".join(f"{d}-D: {'yes' if v else 'no'}"
                                                           for d, v in target["holds_by_dim"].items())]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a trained model (EDM family or PSLD): run the trained-model table "
                   "(every sampler x schedule x NFE: FD-digits, RMS to a high-NFE reference, last level, HF energy) "
                   "instead of the mixtures")
    m = p.add_argument_group("with MODEL")
    m.add_argument("--schedules", help="comma list (default " + "; ".join(
                   f"{family}: {','.join(names)}" for family, names in model_samplers.SCHEDULES.items())
                   + "; 'model' fits the grid to the model per sampler and NFE; 'model+afs' runs the "
                   "grid fitted for NFE + 1 calls with an analytic first step; 'learned' learns the grid and "
                   "per-step parameters of DPM-Solver++ samplers by gradient, as `tune --learn`)")
    m.add_argument("--teleport", type=float, metavar="SIGMA", help="start every run (the reference's and the fits' "
                   "too) by the exact flow of Gaussian data down to SIGMA (PSLD: a time), all NFE below it")
    m.add_argument("--data-stats", metavar="DATA|FILE", help="data mean and covariance for 'model+afs' and "
                   "--teleport (default: from the run's training data)")
    m.add_argument("--seeds", default=model_samplers.EVAL_SEEDS, help="evaluation seeds")
    m.add_argument("--tuning-seeds", default=model_samplers.TUNING_SEEDS, help="seeds of the fitted schedules' "
                   "tuning noise (disjoint from --seeds)")
    m.add_argument("--tune-nfe", type=int_list, help="NFEs at which 'model' and 'model+afs' rows are fitted "
                   "(default: all)")
    m.add_argument("--max-evals", type=int, default=200, help="sampler runs per fitted schedule")
    m.add_argument("--learn-iterations", type=positive_int, default=model_samplers.ITERATIONS,
                   help=f"gradient steps per 'learned' row (default {model_samplers.ITERATIONS})")
    add_hf_tolerance_argument(m)
    m.add_argument("--batch", type=int, default=1000, help="samples per batch")
    m.add_argument("--device", default="auto")
    by_family = "; ".join(f"{family}: {','.join(names)}" for family, names in model_samplers.SAMPLERS.items())
    p.add_argument("--samplers", help="comma list of name or name@schedule (default: every deterministic "
                   "EDM-family sampler at its default schedule); with MODEL, name[:KEY=VALUE...] (e.g. ipndm:order=2; "
                   f"default the model family's: {by_family})")
    p.add_argument("--nfe", type=int_list, help=f"comma list (default {','.join(map(str, NFES))})")
    p.add_argument("--dims", type=int_list, default=[2, 64], help="mixture dimensions to run: 2, 64 (default both)")
    p.add_argument("--n", type=int, help="samples per problem (default 1000; 64 with --quick)")
    p.add_argument("--out", type=Path, help="output directory (default benchmarks/samplers; with MODEL: "
                   "bench-model)")
    p.add_argument("--quick", action="store_true", help="a smoke run: n 64, NFE 3,5,10, ring2d and benchmark64 "
                   "only, exact rtol 1e-8")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the work is many small "
                   "tensor ops, which extra threads slow down on a shared machine)")


def main(args: argparse.Namespace) -> dict:
    if args.model:
        args.out = args.out or Path("bench-model")
        args.nfe = args.nfe or list(model_samplers.NFES)
        return model_samplers.main(args)
    args.out = args.out or Path("benchmarks/samplers")
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
    samplers = select_samplers(EDM_FAMILY, args.samplers.split(",") if args.samplers else default_samplers())
    problems = select_problems(args.dims, quick)
    info, rows = run_benchmark(BENCHMARK, samplers, nfes, problems, n, n, rtol)
    result = {**provenance("cpu"), "protocol": protocol(n, nfes, rtol), "problems": info, "results": rows,
              "target": target_check(rows, problems), "quick": quick,
              "seconds": round(time.perf_counter() - started, 1)}
    report.write(args.out, result, BENCHMARK, target_lines(result["target"]))
    print(f"wrote {args.out / 'results.json'}, results.md, error_vs_nfe.png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fastdiffusion.bench.samplers", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
