"""PSLD samplers (Euler-Maruyama, SSCS, splitting, conjugate) on exact-score Gaussian mixtures.

    python -m fastdiffusion.bench.psld_samplers --out benchmarks/psld_samplers [--tune] [--quick]

Protocol (every number in the outputs comes from it):

* **Process**: PSLD with the reference CIFAR-10 constants (``PSLD()``: Γ = 0.01, ν = 4.01, M⁻¹ = 4, β = 8, γ = 0.04),
  times from T = 1 down to eval_eps = 1e-3, then every sampler's counted last step to t = 0.
* **Problems** (exact ε of ``PSLDMixtureEps``, float64): ``ring2d`` (2-D, 8 modes of std 0.1 on a circle) and
  ``benchmark64`` (64-D, 16 anisotropic modes), ``n`` prior draws z_T ~ N(0, diag(1, M)) from a fixed seed; every
  sampler starts from the same z_T and, if stochastic, draws its noise from the same seed.
* **Samplers**: every registered PSLD sampler with its default schedule (``quadratic``: t_i = (√T + i/(N−1)
  (√eps − √T))²) and defaults, the tuned λ / λ_s of its NFE, at NFE in {10, 20, 50, 100, 200}. A sampler with k > 1
  calls per step runs at the largest NFE of the form k n + 1 not above the target (recorded as ``nfe_run``).
* **Metrics**: ``mmd`` = √max(MMD², 0) between the x samples and the data distribution, with the kernel
  k(x, y) = ½ Σ_{ℓ ∈ {ℓ₀, 4ℓ₀}} exp(−‖x − y‖²/2ℓ²), ℓ₀² = D · mean component variance, the data term in closed
  form for the mixture and the sample term an unbiased U-statistic (so a perfect sampler scores ≈ 0, no floor);
  ``sw2`` = sliced W2 (256 directions) to ``n`` fresh data samples, with ``sw2_floor`` that of another such draw;
  for deterministic samplers ``error`` = mean ‖x − x_exact‖₂ to the exact PF-ODE endpoint (scipy DOP853 in ln t,
  rtol 1e-10, float64, from T to eval_eps, then the same last step) on the first ``n_exact`` draws.
* **Target** (issue 4): the best splitting/conjugate sampler's MMD at NFE 20 is reached by EM or SSCS only at
  NFE ≥ 100 (or never).
* **Tuning** (``--tune``): on separate mixtures ``random(2, 8, seed=2002, component_std=0.2)`` and
  ``random(64, 16, seed=2064, spread=0.9, component_std=0.3)`` with their own seeds, for each NFE: λ of psld-conj
  and csps-d minimises the geometric mean over the two of the endpoint error; λ_s of sps-s and csps-s minimises the
  mean of their MMD. The table is printed in the form ``fastdiffusion.samplers.splitting`` stores.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import atomic_write_bytes
from ..data.gmm import GaussianMixture
from ..errors import UserError
from ..metrics.sliced import sliced_wasserstein
from ..processes.psld import PSLD
from ..processes.psld_exact import PSLDMixtureEps, pf_ode_solution
from ..samplers import SAMPLERS, get_sampler, make_sigmas
from ..samplers.splitting import final_step
from .provenance import provenance

NFES = (10, 20, 50, 100, 200)
EXACT_RTOL = 1e-10
BASELINES = ("em", "sscs")
LAMBDAS = (-3.0, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
LAMBDAS_S = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 14.0)
TUNED = {"psld-conj": ("lam", LAMBDAS), "csps-d": ("lam", LAMBDAS),
         "sps-s": ("lam_s", LAMBDAS_S), "csps-s": ("lam_s", LAMBDAS_S)}


@dataclass(frozen=True)
class Problem:
    name: str
    make: Callable[[], GaussianMixture]
    seed: int


PROBLEMS = (Problem("ring2d", GaussianMixture.ring2d, 21), Problem("benchmark64", GaussianMixture.benchmark64, 22))
TUNING = (Problem("tune2d", lambda: GaussianMixture.random(2, 8, seed=2002, component_std=0.2), 31),
          Problem("tune64", lambda: GaussianMixture.random(64, 16, seed=2064, spread=0.9, component_std=0.3), 32))


# -- MMD against a Gaussian mixture --------------------------------------------------------------------------------
def _expected_kernel(mix: GaussianMixture, x: Tensor, ell2: float) -> Tensor:
    """E_{y~p} exp(−‖x − y‖²/2ℓ²) = Σ_k w_k Π_d (ℓ²/(ℓ² + v_kd))^{½} exp(−(x_d − μ_kd)²/2(ℓ² + v_kd)), per row."""
    mu, var, log_w = (v.to(x.device) for v in (mix.means, mix.variances, mix.weights.log()))
    s = var + ell2
    inv = 1 / s
    quad = (x * x) @ inv.T - 2 * x @ (mu * inv).T + (mu**2 * inv).sum(1)
    log_c = 0.5 * (math.log(ell2) * mix.dim - s.log().sum(1))
    return (log_w + log_c - 0.5 * quad).exp().sum(1)


def _data_kernel(mix: GaussianMixture, ell2: float) -> float:
    """E_{y,y'~p} k(y, y') in closed form (sum over pairs of components)."""
    s = mix.variances[:, None] + mix.variances[None] + ell2  # (K, K, D)
    d2 = (mix.means[:, None] - mix.means[None]) ** 2
    log_t = 0.5 * (math.log(ell2) * mix.dim - s.log().sum(-1)) - 0.5 * (d2 / s).sum(-1)
    return float((mix.weights[:, None] * mix.weights[None] * log_t.exp()).sum())


def _sample_kernel(x: Tensor, ell2: float, chunk: int = 2048) -> float:
    """Unbiased (1/n(n−1)) Σ_{i≠j} exp(−‖x_i − x_j‖²/2ℓ²)."""
    n, sq, total = len(x), (x * x).sum(1), 0.0
    for lo in range(0, n, chunk):
        d2 = (sq[lo:lo + chunk, None] + sq[None] - 2 * x[lo:lo + chunk] @ x.T).clamp_min(0)
        total += float((-d2 / (2 * ell2)).exp().sum())
    return (total - n) / (n * (n - 1))


def mmd2(x: Tensor, mix: GaussianMixture) -> float:
    """Unbiased MMD² between samples x (n, D) and the mixture, kernel ½ Σ_{ℓ ∈ {ℓ₀, 4ℓ₀}} exp(−‖·‖²/2ℓ²)."""
    x = x.reshape(len(x), -1).double()
    ell2 = mix.dim * float(mix.variances.mean())
    out = 0.0
    for scale in (1.0, 16.0):
        e2 = ell2 * scale
        out += 0.5 * (_sample_kernel(x, e2) - 2 * float(_expected_kernel(mix, x, e2).mean()) + _data_kernel(mix, e2))
    return out


def mmd(x: Tensor, mix: GaussianMixture) -> float:
    return math.sqrt(max(mmd2(x, mix), 0.0))


# -- running samplers ----------------------------------------------------------------------------------------------
class Counted:
    """An exact ε-model that counts its calls and knows its process, as samplers expect of a PSLD model."""

    def __init__(self, eps: PSLDMixtureEps) -> None:
        self.eps, self.process, self.calls = eps, eps.process, 0

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.eps(z, t)


def runnable_nfe(name: str, nfe: int) -> int:
    """The largest NFE ≤ ``nfe`` that sampler ``name`` can make."""
    spec = get_sampler(name)
    for k in range(nfe, 0, -1):
        try:
            spec.steps(k)
            return k
        except UserError:
            continue
    raise UserError(f"{name} cannot make any NFE <= {nfe}")


def run(name: str, eps: PSLDMixtureEps, z: Tensor, nfe: int, seed: int, **hyper: object) -> Tensor:
    """The sampler's final z from prior draws ``z`` (float64) with exactly ``nfe`` counted calls."""
    spec = get_sampler(name)
    p = eps.process
    ts = make_sigmas(spec.schedule, spec.steps(nfe), p.eval_eps, p.T)
    model = Counted(eps)
    gen = torch.Generator().manual_seed(seed)
    noise = ((lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device))
             if spec.stochastic else None)
    out = spec.fn(model, z.clone(), ts, noise=noise, callback=None, **{**spec.hyper, **hyper})
    if model.calls != nfe:
        raise RuntimeError(f"sampler '{name}' made {model.calls} calls at NFE {nfe}")
    return out


@dataclass
class Prepared:
    problem: Problem
    mixture: GaussianMixture
    eps: PSLDMixtureEps
    z: Tensor
    exact: Tensor
    data: Tensor
    data2: Tensor


def prepare(problem: Problem, n: int, n_exact: int, rtol: float = EXACT_RTOL, device: str = "cpu") -> Prepared:
    """Prior draws, exact PF-ODE endpoints of the first ``n_exact`` of them (on the CPU), and two data draws; the
    draws are placed on ``device``."""
    mix, p = problem.make(), PSLD()
    eps = PSLDMixtureEps(mix, p)
    gen = torch.Generator().manual_seed(problem.seed)
    z = p.prior(torch.randn(n, mix.dim, generator=gen, dtype=torch.float64),
                torch.randn(n, mix.dim, generator=gen, dtype=torch.float64))
    end = pf_ode_solution(eps, z[:n_exact], p.T, p.eval_eps, rtol=rtol, atol=rtol)
    exact = final_step(eps, end, torch.tensor(p.eval_eps, dtype=torch.float64))[:, :mix.dim]
    data = mix.sample(n, torch.Generator().manual_seed(problem.seed + 10_000))
    data2 = mix.sample(n, torch.Generator().manual_seed(problem.seed + 20_000))
    return Prepared(problem, mix, eps, z.to(device), exact.to(device), data.to(device), data2.to(device))


def endpoint_error(prep: Prepared, name: str, nfe: int, **hyper: object) -> float:
    """Mean L2 distance to the exact PF-ODE endpoints (deterministic samplers; run on those draws only)."""
    k = len(prep.exact)
    x = run(name, prep.eps, prep.z[:k], nfe, 0, **hyper)[:, :prep.mixture.dim]
    return float((x - prep.exact).norm(dim=1).mean()) if bool(torch.isfinite(x).all()) else math.inf


def measure(prep: Prepared, name: str, nfe: int, seed: int, **hyper: object) -> dict:
    """mmd, sw2 and (deterministic samplers) endpoint error of one run."""
    d = prep.mixture.dim
    x = run(name, prep.eps, prep.z, nfe, seed, **hyper)[:, :d]
    ok = bool(torch.isfinite(x).all())
    row = {"mmd": mmd(x, prep.mixture) if ok else math.inf,
           "sw2": sliced_wasserstein(x, prep.data, 256, torch.Generator().manual_seed(0)) if ok else math.inf,
           "error": None}
    if not get_sampler(name).stochastic:
        k = len(prep.exact)
        row["error"] = float((x[:k] - prep.exact).norm(dim=1).mean()) if ok else math.inf
    return row


# -- tuning --------------------------------------------------------------------------------------------------------
def tune(nfes: Sequence[int], n: int, n_exact: int, device: str = "cpu", log: Callable[[str], None] = print
         ) -> dict:
    """Per-NFE λ (psld-conj, csps-d: geometric-mean endpoint error) and λ_s (sps-s, csps-s: mean MMD) on ``TUNING``."""
    preps = [prepare(pr, n, n_exact, device=device) for pr in TUNING]
    tables: dict[str, dict[int, float]] = {}
    details: dict[str, dict] = {}
    for name, (key, grid) in TUNED.items():
        stochastic = get_sampler(name).stochastic
        tables[name], details[name] = {}, {}
        for nfe in nfes:
            scores = {}
            for value in grid:
                vals = [mmd(run(name, pp.eps, pp.z, nfe, 0, **{key: value})[:, :pp.mixture.dim], pp.mixture)
                        if stochastic else endpoint_error(pp, name, nfe, **{key: value}) for pp in preps]
                scores[value] = (sum(vals) / len(vals) if stochastic
                                 else math.exp(sum(math.log(max(v, 1e-300)) for v in vals) / len(vals)))
            best = min(scores, key=scores.get)
            tables[name][nfe], details[name][str(nfe)] = best, {str(k): v for k, v in scores.items()}
            log(f"tune {name} NFE {nfe}: {key} = {best} ({scores[best]:.4g})")
    return {"problems": [p.name for p in TUNING], "tables": tables, "scores": details,
            "objective": {"deterministic": "geometric mean of the endpoint error", "stochastic": "mean MMD"}}


# -- the benchmark -------------------------------------------------------------------------------------------------
def psld_samplers() -> list[str]:
    return sorted(n for n, s in SAMPLERS.items() if s.family == "psld")


def run_benchmark(samplers: Sequence[str], nfes: Sequence[int], n: int, n_exact: int, device: str = "cpu",
                  log: Callable[[str], None] = print) -> dict:
    rows, info = [], {}
    for problem in PROBLEMS:
        t0 = time.perf_counter()
        prep = prepare(problem, n, n_exact, device=device)
        floor = sliced_wasserstein(prep.data2, prep.data, 256, torch.Generator().manual_seed(0))
        info[problem.name] = {"dim": prep.mixture.dim, "n_components": prep.mixture.n_components, "n": n,
                              "n_exact": n_exact, "sw2_floor": floor, "mmd_of_data_draw": mmd(prep.data2,
                                                                                                prep.mixture)}
        log(f"{problem.name}: prepared in {time.perf_counter() - t0:.1f} s; SW2 floor {floor:.4f}")
        for name in samplers:
            t0 = time.perf_counter()
            for nfe in nfes:
                nfe_run = runnable_nfe(name, nfe)
                rows.append({"problem": problem.name, "sampler": name, "nfe": nfe, "nfe_run": nfe_run,
                             "stochastic": get_sampler(name).stochastic,
                             **measure(prep, name, nfe_run, problem.seed)})
            log(f"  {name}: {time.perf_counter() - t0:.1f} s")
    return {"problems": info, "results": rows, "target": target_check(rows)}


def target_check(rows: list[dict]) -> dict:
    """Per problem: best non-baseline MMD at NFE 20, and the smallest NFE at which EM or SSCS reach it."""
    out = {}
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = {r["sampler"]: r["mmd"] for r in rows
                if r["problem"] == problem and r["nfe"] == 20 and r["sampler"] not in BASELINES}
        best = min(mine, key=mine.get)
        base = sorted((r["nfe"], r["sampler"], r["mmd"]) for r in rows
                      if r["problem"] == problem and r["sampler"] in BASELINES)
        reached = next(((nfe, s) for nfe, s, v in base if v <= mine[best]), None)
        out[problem] = {"best": best, "mmd": mine[best], "baseline_reaches_at": reached,
                        "holds": reached is None or reached[0] >= 100}
    return out


# -- outputs -------------------------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "n/a" if v is None else ("inf" if v == math.inf else f"{v:.3g}")


def markdown(result: dict) -> str:
    nfes = result["nfe"]
    lines = ["# PSLD samplers on exact-score Gaussian mixtures", "",
             f"Command: `{result['command']}`; commit {result['git_commit']}; {result['device']}; "
             f"torch {result['versions']['torch']}; {result['timestamp']}; {result['seconds']:.0f} s.", "",
             "Protocol: see `fastdiffusion/bench/psld_samplers.py` (module docstring). MMD: √MMD² to the exact "
             "mixture (≈ 0 for a perfect sampler); error: mean L2 to the exact PF-ODE endpoint (deterministic "
             "samplers only); k-calls-per-step samplers run at the largest NFE k n + 1 ≤ the column's.", ""]
    for metric, title in (("mmd", "MMD to the data distribution"), ("error", "endpoint error (deterministic)"),
                          ("sw2", "sliced W2 to a data draw")):
        lines += [f"## {title}", ""]
        for problem, info in result["problems"].items():
            extra = (f"; a fresh data draw scores SW2 {info['sw2_floor']:.4f}" if metric == "sw2" else
                     f"; a fresh data draw scores MMD {info['mmd_of_data_draw']:.2g}" if metric == "mmd" else "")
            lines += [f"### {problem} (D = {info['dim']}, n = {info['n']}{extra})", "",
                      "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|" + "---|" * len(nfes)]
            for name in dict.fromkeys(r["sampler"] for r in result["results"]):
                vals = {r["nfe"]: r for r in result["results"] if r["problem"] == problem and r["sampler"] == name}
                if metric == "error" and vals and next(iter(vals.values()))["stochastic"]:
                    continue
                cells = []
                for k in nfes:
                    r = vals.get(k)
                    cell = _fmt(None if r is None else r[metric])
                    cells.append(cell if r is None or r["nfe_run"] == k else f"{cell} ({r['nfe_run']})")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Target: best splitting/conjugate sampler at NFE 20 vs EM/SSCS", "",
              "| problem | best at NFE 20 | its MMD | EM/SSCS first reach it at | holds |", "|---|---|---|---|---|"]
    for problem, c in result["target"].items():
        reach = "never (NFE ≤ 200)" if c["baseline_reaches_at"] is None else \
            f"NFE {c['baseline_reaches_at'][0]} ({c['baseline_reaches_at'][1]})"
        lines.append(f"| {problem} | {c['best']} | {c['mmd']:.3g} | {reach} | {'yes' if c['holds'] else 'no'} |")
    tables = result["tuning"]["tables"] if "tuning" in result else result.get("defaults", {})
    if tables:
        lines += ["", "## Tuned hyperparameters (per NFE)", "",
                  "Tuned by `--tune` on separate mixtures (module docstring; scores in tuning.json) and stored in "
                  "`fastdiffusion.samplers.splitting`; the runs above use these defaults.", ""]
        for name, table in tables.items():
            lines.append(f"- {name} ({TUNED[name][0]}): " + ", ".join(f"{k}: {v}" for k, v in table.items()))
    return "\n".join(lines) + "\n"


def tuned_defaults() -> dict[str, dict[int, float]]:
    """The per-NFE defaults the samplers module holds (what a run without ``--tune`` uses)."""
    from ..samplers import splitting

    return {"psld-conj": splitting.PSLD_CONJ_LAMBDA, "csps-d": splitting.CSPS_D_LAMBDA,
            "sps-s": splitting.SPS_S_LAMBDA_S, "csps-s": splitting.CSPS_S_LAMBDA_S}


def plot(result: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(result["problems"])
    names = list(dict.fromkeys(r["sampler"] for r in result["results"]))
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(2, len(problems), figsize=(6 * len(problems), 9), squeeze=False,
                             constrained_layout=True)
    for col, problem in enumerate(problems):
        for row, metric in enumerate(("mmd", "error")):
            ax = axes[row, col]
            for j, name in enumerate(names):
                pts = sorted((r["nfe_run"], r[metric]) for r in result["results"]
                             if r["problem"] == problem and r["sampler"] == name and r[metric] is not None
                             and math.isfinite(r[metric]) and r[metric] > 0)
                if pts:
                    style = "--" if get_sampler(name).stochastic else "-"
                    ax.loglog(*zip(*pts, strict=True), style, marker="o", ms=3, color=colors[j % 20], label=name)
            ax.set_title(f"{problem}: {'MMD to data' if metric == 'mmd' else 'PF-ODE endpoint error'}")
            ax.set_xlabel("NFE")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m fastdiffusion.bench.psld_samplers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/psld_samplers"))
    parser.add_argument("--n", type=int, default=4000, help="samples per problem (default 4000)")
    parser.add_argument("--n-exact", type=int, default=500, help="exact PF-ODE endpoints per problem (default 500)")
    parser.add_argument("--nfe", default=",".join(map(str, NFES)))
    parser.add_argument("--samplers", help="comma list (default: every PSLD sampler)")
    parser.add_argument("--tune", action="store_true", help="tune lambda / lambda_s first (printed, and stored)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where samples, exact scores and MMD run (default cpu)")
    parser.add_argument("--skip-bench", action="store_true", help="with --tune: tune only")
    parser.add_argument("--quick", action="store_true", help="smoke run: n 256, n-exact 32, NFE 10,20")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, n_exact = (256, 32) if args.quick else (args.n, args.n_exact)
    nfes = [10, 20] if args.quick else [int(v) for v in args.nfe.split(",")]
    samplers = args.samplers.split(",") if args.samplers else psld_samplers()
    t0 = time.perf_counter()
    result: dict = {**provenance(args.device), "nfe": nfes, "defaults": tuned_defaults()}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        result["tuning"] = tune(nfes, n, n_exact, args.device)
        atomic_write_bytes(args.out / "tuning.json", (json.dumps(result, indent=1) + "\n").encode())
        for name, table in result["tuning"]["tables"].items():
            print(f"{name}: {table}")
        if args.skip_bench:
            return result
    result.update(run_benchmark(samplers, nfes, n, n_exact, args.device))
    result["seconds"] = time.perf_counter() - t0
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    atomic_write_bytes(args.out / "results.md", markdown(result).encode())
    plot(result, args.out / "error_vs_nfe.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
