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
  default schedule (rho = 7) and hyperparameters, in float64, at NFE in {3, 4, 5, 6, 8, 10, 15, 20, 35, 50, 100}.
  An NFE a sampler cannot make (heun: even NFE) is recorded as n/a; every run's network calls are counted and must
  equal its NFE.
* **Metrics**: endpoint error = mean over samples of ``||x - x_exact||_2``; distribution distance = sliced
  Wasserstein-2 (``fastdiffusion.metrics.sliced``, 256 directions from a fixed seed) to ``n`` fresh data samples of a
  fixed seed; ``sw2_floor`` is the exact endpoints' SW2 to the same data (what a perfect solver gets at this n).
* **Target** (issue 4): the best sampler's endpoint error at NFE 5 and 10 is at most half of DPM-Solver++(2M)'s
  (the better of its runs: default logsnr and the karras variant), on every problem of each dimension.

**lambda-DDIM tuning** (``--tune-lambda``): four tuning mixtures generated separately from the benchmark ones
(``random(2, 8, seed=1001/1002, component_std=0.2)``, ``random(64, 16, seed=1064/1065, spread=0.9,
component_std=0.3)``), their own noise seeds, ``n`` points each, the karras schedule on [0.002, 80]. For each NFE,
lambda minimises the geometric mean over the four mixtures of the endpoint error (so 2-D and 64-D count alike) on a
coarse grid (-0.04 ... 0.01, step 0.004) refined around its best point (step 0.001). The winning table is written to
``lambda_tuning.json`` and printed as the dict that ``fastdiffusion.samplers.conjugate.LAMBDA_BY_NFE`` holds.
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
# checked against DPM-Solver++(2M)'s better schedule).
VARIANTS = ("dpmpp-2m@karras", "ipndm@logsnr")


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
    sigmas = make_sigmas(schedule, steps, SIGMA_MIN, SIGMA_MAX, RHO)
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
    """Per problem and NFE in TARGET_NFES: best sampler / dpmpp-2m error; per dimension: does it hold everywhere."""
    per_problem, per_dim = {}, {}
    for problem in problems:
        for nfe in TARGET_NFES:
            errs = _lookup(rows, problem.name, nfe)
            base = {k: v for k, v in errs.items() if k.startswith(BASELINE + "@")}
            others = {k: v for k, v in errs.items() if not k.startswith(BASELINE + "@")}
            if not base or not others:
                continue
            base_err = min(base.values())
            best = min(others, key=others.get)
            ratio = others[best] / base_err
            per_problem[f"{problem.name}@{nfe}"] = {"best": best, "error": others[best], "baseline": base_err,
                                                    "ratio": ratio, "holds": ratio <= TARGET_RATIO}
            per_dim.setdefault(str(problem.dim), []).append(ratio <= TARGET_RATIO)
    return {"rule": f"best error <= {TARGET_RATIO} x {BASELINE} at NFE {list(TARGET_NFES)}", "cases": per_problem,
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
    lines += ["## Target", "", target.get("rule", ""), "", "| case | best | error | dpmpp-2m | ratio | holds |",
              "|---|---|---|---|---|---|"]
    for case, c in target.get("cases", {}).items():
        lines.append(f"| {case} | {c['best']} | {c['error']:.3g} | {c['baseline']:.3g} | {c['ratio']:.2f} | "
                     f"{'yes' if c['holds'] else 'no'} |")
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
