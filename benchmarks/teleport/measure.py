"""Where the Gaussian shortcuts help (issue 20 item 4): the analytic first step (AFS) and the teleport, against the
plain sampler at the same number of network calls.

(a) exact-score Gaussian mixtures (``fastdiffusion.bench.problems.EDM_PROBLEMS``; the statistics are the mixture's
    exact mean and covariance): mean endpoint error ||x - x_exact|| against the float64 DOP853 PF-ODE solve from the
    same start, and for each teleport level its floor (teleport, then the exact solve from sigma_T: the error of the
    Gaussian jump alone).
(b) trained models (run directories): FD-digits of ``--n`` samples for ``--seeds``, statistics from the run's training
    data (``--data-stats`` to name others).

    python benchmarks/teleport/measure.py --runs /tmp/demo-run --out benchmarks/teleport/cpu.json
    python benchmarks/teleport/measure.py --no-mixtures --runs runs/digits32-edm --device cuda --nfe 4,5,6,8,10 \
        --out benchmarks/teleport/gpu.json

Every option runs exactly the NFE named in network calls (AFS: the sampler's grid of NFE + 1 calls, the first one
analytic; teleport: the sampler's own schedule over [sigma_min, sigma_T]). Writes one JSON (with provenance) and a
markdown summary beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import fastdiffusion as fd
from fastdiffusion.bench.edm_exact import SIGMA_MAX, SIGMA_MIN, exact_endpoint
from fastdiffusion.bench.harness import EXACT_RTOL, prepare
from fastdiffusion.bench.problems import EDM_FAMILY, EDM_PROBLEMS
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_bytes, atomic_write_json
from fastdiffusion.data.stats import resolve_data_stats
from fastdiffusion.errors import UserError
from fastdiffusion.processes.gaussian_data import GaussianDataStats
from fastdiffusion.samplers.counted import CountedModel
from fastdiffusion.sampling import check_sampler_args


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def options(teleports: list[float]) -> list[dict]:
    """The compared options: the plain sampler, AFS, and a teleport to each level."""
    return [{"option": "baseline"}, {"option": "afs", "afs": True},
            *({"option": f"teleport {t:g}", "teleport": t} for t in teleports)]


def runnable(sampler: str, nfe: int, opt: dict) -> bool:
    try:
        check_sampler_args(sampler, nfe, {}, bool(opt.get("afs")))
        return True
    except UserError:
        return False


def shortcut_kwargs(opt: dict) -> dict:
    return {k: opt[k] for k in ("afs", "teleport") if k in opt}


# ------------------------------------------------------------------------------------------------ (a) mixtures


def mixtures(args: argparse.Namespace) -> list[dict]:
    rows = []
    for problem in EDM_PROBLEMS:
        prep = prepare(EDM_FAMILY, problem, args.points, args.points, EXACT_RTOL)
        stats = GaussianDataStats.from_mixture(prep.mixture)
        noise = prep.start / SIGMA_MAX  # the standard-normal draw behind the benchmark's start states
        floors = {}
        for t in args.teleport:
            x_t = stats.transport(prep.start, SIGMA_MAX, t)
            floors[t] = float((exact_endpoint(prep.mixture, x_t, SIGMA_MIN, t, EXACT_RTOL)[0] - prep.exact)
                              .norm(dim=1).mean())
        print(f"{problem.name}: exact solve {prep.exact_seconds:.1f}s; teleport floors "
              + ", ".join(f"{t:g}: {v:.3g}" for t, v in floors.items()), flush=True)
        for sampler in args.samplers:
            for opt in options(args.teleport):
                for nfe in args.mixture_nfe:
                    row = {"problem": problem.name, "dim": problem.dim, "sampler": sampler, "nfe": nfe,
                           **opt, "error": None}
                    if "teleport" in opt:
                        row["teleport_floor"] = floors[opt["teleport"]]
                    if runnable(sampler, nfe, opt):
                        counted = CountedModel(prep.model)
                        x = fd.sample(counted, noise, sampler=sampler, nfe=nfe, sigma_min=SIGMA_MIN,
                                      sigma_max=SIGMA_MAX, data_stats=stats, **shortcut_kwargs(opt))
                        assert counted.calls == nfe, (sampler, nfe, opt, counted.calls)
                        err = (x.double() - prep.exact).norm(dim=1).mean()
                        row["error"] = float(err) if bool(torch.isfinite(err)) else math.inf
                    rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- (b) trained models


def run_stats(run: str, spec: str | None, model: fd.ProcessModel) -> GaussianDataStats:
    """``spec`` if named; else the run's recorded training data (config.json), computed here and not cached."""
    if spec is None:
        cfg = json.loads((Path(run) / "config.json").read_text())
        spec = f"{cfg['data']}@{cfg.get('data_split', 'all')}"
    return resolve_data_stats(run, spec, model.data_shape)


def trained(args: argparse.Namespace, described: dict) -> list[dict]:
    from fastdiffusion.metrics.evaluate import evaluate

    rows = []
    for run in args.runs:
        model = fd.load_model(run)
        stats = run_stats(run, args.data_stats, model)
        described[run] = stats.describe()
        print(f"{run}: {model.process.name}, data {model.data_shape}, statistics {stats.describe()}", flush=True)
        for sampler in args.samplers:
            for opt in options(args.teleport):
                for nfe in args.nfe:
                    row = {"run": run, "process": model.process.name, "sampler": sampler, "nfe": nfe, **opt,
                           "fd_digits": None}
                    if runnable(sampler, nfe, opt):
                        t0 = time.perf_counter()
                        report = evaluate(run, metrics="fd-digits", n=args.n, seeds=args.seeds, sampler=sampler,
                                          nfe=nfe, batch=args.batch, device=args.device, data_stats=stats,
                                          **shortcut_kwargs(opt))
                        res = report["results"]["fd-digits"]
                        row.update(fd_digits=res["value"], seconds=time.perf_counter() - t0,
                                   reference=res["protocol"]["reference"])
                        print(f"  {sampler:9s} {opt['option']:13s} NFE {nfe:2d}: FD-digits {res['value']:.3f} "
                              f"({row['seconds']:.0f}s)", flush=True)
                    rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- report


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def table(rows: list[dict], key: str, nfes: list[int], floor: bool = False) -> list[str]:
    lines = ["| sampler | option | " + " | ".join(f"NFE {n}" for n in nfes) + (" | floor |" if floor else " |"),
             "|---|---|" + "---|" * (len(nfes) + floor)]
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen.setdefault((r["sampler"], r["option"]), {})[r["nfe"]] = r
    for (sampler, option), by_nfe in seen.items():
        best = {n: min((x[key] for x in rows if x["nfe"] == n and x["sampler"] == sampler and x[key] is not None),
                       default=None) for n in nfes}
        cells = []
        for n in nfes:
            v = by_nfe.get(n, {}).get(key)
            cells.append(f"**{fmt(v)}**" if v is not None and v == best[n] else fmt(v))
        extra = f" | {fmt(next(iter(by_nfe.values())).get('teleport_floor'))}" if floor else ""
        lines.append(f"| {sampler} | {option} | " + " | ".join(cells) + extra + " |")
    return lines


def markdown(result: dict) -> str:
    out = ["# Analytic first step and teleport (issue 20 item 4)", "",
           f"`{result['provenance']['command']}` on {result['provenance']['device']}, commit "
           f"{result['provenance']['git_commit']}. Bold: the best option of that sampler at that NFE. "
           "NFE = network calls (AFS runs the sampler's grid of NFE + 1 calls, the first analytic; teleport spends "
           "all NFE below sigma_T). n/a: a NFE the sampler cannot make (heun: odd NFE, odd NFE + 1 with AFS).", ""]
    if result["mixtures"]:
        p = result["protocol"]["mixtures"]
        out += ["## (a) Exact-score Gaussian mixtures: mean endpoint error vs the exact PF-ODE", "",
                f"{p['points']} start points per problem; exact: {p['exact']}. floor: the error of the teleport "
                "followed by the exact solve (the Gaussian jump alone).", ""]
        for problem in dict.fromkeys(r["problem"] for r in result["mixtures"]):
            rows = [r for r in result["mixtures"] if r["problem"] == problem]
            out += [f"### {problem} (D = {rows[0]['dim']})", "", *table(rows, "error", p["nfe"], floor=True), ""]
    if result["trained"]:
        p = result["protocol"]["trained"]
        out += ["## (b) Trained models: FD-digits (lower is better)", "",
                f"{p['n']} samples, seeds {p['seeds']}, EMA weights; reference and statistics per run below.", ""]
        for run in dict.fromkeys(r["run"] for r in result["trained"]):
            rows = [r for r in result["trained"] if r["run"] == run]
            ref = next((r["reference"] for r in rows if r.get("reference")), "?")
            out += [f"### {run} ({rows[0]['process']}; reference {ref}; statistics "
                    f"{result['data_stats'][run]['source']}, rank {result['data_stats'][run]['rank']})", "",
                    *table(rows, "fd_digits", p["nfe"]), ""]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/teleport/results.json"))
    parser.add_argument("--samplers", type=lambda s: s.split(","), default=["heun", "dpmpp-2m", "ipndm"])
    parser.add_argument("--teleport", type=floats, default=[5.0, 10.0, 20.0, 40.0], help="sigma_T levels")
    parser.add_argument("--no-mixtures", dest="mixtures", action="store_false", help="skip (a)")
    parser.add_argument("--mixture-nfe", type=ints, default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--points", type=int, default=500, help="start points per mixture problem")
    parser.add_argument("--runs", nargs="*", default=[], help="run directories of trained EDM-family models")
    parser.add_argument("--nfe", type=ints, default=[4, 5, 6, 8], help="NFEs for the trained models")
    parser.add_argument("--n", type=int, default=1000, help="samples per FD-digits evaluation")
    parser.add_argument("--seeds", default="100000-100999")
    parser.add_argument("--data-stats", help="DATA[@SPLIT] or a statistics file (default: each run's training data)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (trained models only)")
    args = parser.parse_args()
    args.device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    t0 = time.perf_counter()
    result = {"provenance": provenance(args.device), "protocol": {}, "mixtures": [], "trained": [], "data_stats": {}}
    if args.mixtures:
        result["protocol"]["mixtures"] = {
            "problems": [p.name for p in EDM_PROBLEMS], "points": args.points, "nfe": args.mixture_nfe,
            "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "statistics": "the mixture's exact mean and covariance",
            "exact": f"scipy DOP853 in u = ln sigma, rtol = atol = {EXACT_RTOL:g}, float64, then D(x; sigma_min)",
            "error": "mean over points of ||x - x_exact||_2; fd.sample with its fp32 state",
            "schedules": "each sampler's default (heun, ipndm: karras rho 7; dpmpp-2m: logsnr)"}
        result["mixtures"] = mixtures(args)
    if args.runs:
        result["protocol"]["trained"] = {"metric": "fd-digits", "n": args.n, "seeds": args.seeds, "nfe": args.nfe,
                                         "weights": "ema", "device": args.device}
        result["trained"] = trained(args, result["data_stats"])
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(result).encode())
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({result['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
