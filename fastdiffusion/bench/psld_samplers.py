"""``fastdiffusion bench psld-samplers``: PSLD samplers (Euler-Maruyama, SSCS, splitting, conjugate) on exact-score
Gaussian mixtures (protocol: docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checkpoint import atomic_write_json
from ..samplers import SAMPLERS, splitting
from . import report
from .cli import int_list
from .distances import N_PROJECTIONS, mmd, sw2
from .harness import EXACT_RTOL, RHO, Benchmark, Prepared, run_benchmark, select_samplers
from .problems import PSLD_FAMILY, PSLD_PROBLEMS
from .provenance import provenance
from .tuning import PSLD_TUNED, tune_psld

NFES = (10, 20, 50, 100, 200)
QUICK_NFES = (10, 20)
BASELINES = ("em", "sscs")
TARGET_NFE, TARGET_REACH = 20, 100


def floors(prep: Prepared) -> dict:
    """What a second data draw (a perfect sampler) scores: its SW2 to the data draw and its MMD to the mixture."""
    draw = prep.mixture.sample(len(prep.data), torch.Generator().manual_seed(prep.problem.seed + 20_000))
    draw = draw.to(prep.data.device)
    return {"sw2_floor": sw2(draw, prep.data, 0), "mmd_of_data_draw": mmd(draw, prep.mixture)}


BENCHMARK = Benchmark(
    "PSLD samplers on exact-score Gaussian mixtures", PSLD_FAMILY, metrics=("mmd", "error", "sw2"),
    plotted=("mmd", "error"), round_down=True, sw2_seed=0, floors=floors)


def default_samplers() -> list[str]:
    """Every registered PSLD sampler at its default schedule."""
    return sorted(n for n, s in SAMPLERS.items() if s.family == "psld")


def tuned_defaults() -> dict[str, dict[int, float]]:
    """The per-NFE defaults the samplers module holds (what a run without ``--tune`` uses)."""
    return {"psld-conj": splitting.PSLD_CONJ_LAMBDA, "csps-d": splitting.CSPS_D_LAMBDA,
            "sps-s": splitting.SPS_S_LAMBDA_S, "csps-s": splitting.CSPS_S_LAMBDA_S}


def protocol(n: int, n_exact: int, nfes: Sequence[int]) -> dict:
    """The protocol as recorded in every result JSON of this entry."""
    p = PSLD_FAMILY.process
    return {"process": p.config(), "t_max": p.T,
            "t_min": p.eval_eps, "rho": RHO, "n": n, "n_exact": n_exact, "nfe": list(nfes),
            "nfe_run": "a sampler with k calls per step runs at the largest NFE k n + 1 <= the column's",
            "exact": f"scipy DOP853 in ln t, rtol {EXACT_RTOL:g}, atol {EXACT_RTOL:g}, float64, from t_max to "
                     "t_min, then the samplers' last step to t = 0",
            "error": "mean over the first n_exact samples of ||x - x_exact||_2 (deterministic samplers)",
            "mmd": "sqrt(max(MMD^2, 0)) to the mixture, kernel mean of exp(-|x - y|^2 / 2 l^2) over l in {l0, 4 l0}, "
                   "l0^2 = D mean component variance", "dtype": "float64",
            "sw2": f"sliced Wasserstein-2, {N_PROJECTIONS} fixed directions, vs n fresh data samples"}


def target_check(rows: list[dict]) -> dict:
    """Per problem: best non-baseline MMD at NFE 20, and the smallest NFE at which EM or SSCS reach it."""
    out = {}
    for problem in dict.fromkeys(r["problem"] for r in rows):
        runs = [r for r in rows if r["problem"] == problem and r["mmd"] is not None]
        mine = {report.label(r): r["mmd"] for r in runs if r["nfe"] == TARGET_NFE and r["sampler"] not in BASELINES}
        if not mine:
            continue
        best = min(mine, key=mine.get)
        base = sorted((r["nfe"], report.label(r), r["mmd"]) for r in runs if r["sampler"] in BASELINES)
        reached = next(((nfe, key) for nfe, key, v in base if v <= mine[best]), None)
        out[problem] = {"best": best, "mmd": mine[best], "baseline_reaches_at": reached,
                        "holds": reached is None or reached[0] >= TARGET_REACH}
    return out


def target_lines(result: dict) -> list[str]:
    """The markdown of ``target_check``'s result and of the tuned hyperparameters."""
    lines = [f"## Target: best splitting/conjugate sampler at NFE {TARGET_NFE} vs EM/SSCS", "",
             f"| problem | best at NFE {TARGET_NFE} | its MMD | EM/SSCS first reach it at | holds |",
             "|---|---|---|---|---|"]
    for problem, c in result["target"].items():
        reach = (f"never (NFE ≤ {max(result['protocol']['nfe'])})" if c["baseline_reaches_at"] is None
                 else f"NFE {c['baseline_reaches_at'][0]} ({c['baseline_reaches_at'][1]})")
        lines.append(f"| {problem} | {c['best']} | {c['mmd']:.3g} | {reach} | {'yes' if c['holds'] else 'no'} |")
    tables = result["tuning"]["tables"] if "tuning" in result else result["defaults"]
    lines += ["", "## Tuned hyperparameters (per NFE)", "",
              "Tuned by `--tune` on separate mixtures (scores in tuning.json) and stored in "
              "`fastdiffusion.samplers.splitting`; the runs above use these defaults.", ""]
    return lines + [f"- {name} ({PSLD_TUNED[name][0]}): " + ", ".join(f"{k}: {v}" for k, v in table.items())
                    for name, table in tables.items()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("benchmarks/psld_samplers"), help="output directory")
    p.add_argument("--n", type=int, default=4000, help="samples per problem (default 4000)")
    p.add_argument("--n-exact", type=int, default=500, help="exact PF-ODE endpoints per problem (default 500)")
    p.add_argument("--nfe", type=int_list, default=list(NFES), help=f"comma list (default {','.join(map(str, NFES))})")
    p.add_argument("--samplers", help="comma list of name or name@schedule (default: every PSLD sampler)")
    p.add_argument("--tune", action="store_true", help="tune lambda / lambda_s first (printed, and stored)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="where samples, exact scores and MMD run (default cpu)")
    p.add_argument("--skip-bench", action="store_true", help="with --tune: tune only")
    p.add_argument("--quick", action="store_true", help="smoke run: n 256, n-exact 32, NFE 10,20")


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(max(1, args.threads))
    n, n_exact = (256, 32) if args.quick else (args.n, args.n_exact)
    nfes = list(QUICK_NFES) if args.quick else args.nfe
    samplers = select_samplers(PSLD_FAMILY, args.samplers.split(",") if args.samplers else default_samplers())
    started = time.perf_counter()
    result: dict = {**provenance(args.device), "protocol": protocol(n, n_exact, nfes), "defaults": tuned_defaults()}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        result["tuning"] = tune_psld(nfes, n, n_exact, args.device)
        atomic_write_json(args.out / "tuning.json", result)
        for name, table in result["tuning"]["tables"].items():
            print(f"{name}: {table}")
        if args.skip_bench:
            return result
    info, rows = run_benchmark(BENCHMARK, samplers, nfes, PSLD_PROBLEMS, n, n_exact, device=args.device)
    result.update(problems=info, results=rows, target=target_check(rows),
                  seconds=round(time.perf_counter() - started, 1))
    report.write(args.out, result, BENCHMARK, target_lines(result))
    print(f"wrote {args.out / 'results.json'}, results.md, error_vs_nfe.png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fastdiffusion.bench.psld_samplers", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
