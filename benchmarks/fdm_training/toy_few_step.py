"""Does FDM-EDM's input scaling make its learned denoiser worse at high noise, and few-step sampling worse? A CPU toy.

Hypothesis (from 32-px digits, where FDM-EDM matches EDM at 35 NFE but is 2-4.5x worse in FD at 4-5 NFE): FDM-EDM
keeps EDM's c_skip, c_out and c_noise but sets ``c_in = s_FDM(sigma)``, so the network's input std
``c_in sqrt(sigma^2 + sigma_data^2)`` is 1 for EDM at every sigma but for FDM (multiplier 2) 0.5 at low sigma, up to
~12.6 at sigma 10-25 and ~0 above sigma 60. If that makes the learned denoiser less accurate at sigma 5-50 (or blind
to its input above 60), few-step samplers, whose large steps cross that range, suffer, while many-step ones do not.

Controlled test with exact scores:

* **Data**: a Gaussian mixture with a closed-form denoiser (``fastdiffusion.data.gmm``). Default ``random8``:
  ``GaussianMixture.random(8, 16, seed=8, spread=1.0, component_std=0.3)``, centred and scaled by one factor so the
  mean per-coordinate variance is 0.25 (std 0.5 = EDM's sigma_data) while the covariance stays anisotropic (as image
  covariances are). ``--data ring2d``: ``GaussianMixture.ring2d()`` scaled by 0.5 (isotropic, std 0.5).
  Training draws from ``--train-points`` fixed samples of the mixture.
* **Training**: the library's ``Trainer`` (its ``train_step``: Adam, lr warm-up, EMA with ramp-up, the process's
  loss weight and FDM's loss warm-up clamp), net preset ``mlp`` (residual MLP, 0.88M parameters), identical config
  for ``edm`` and ``fdm-edm`` apart from the process; seeds 0..S-1 give the same initial weights to both processes.
  The Trainer's dataset loader knows no 8-D mixture, so this script swaps in its own ``Dataset`` of mixture samples
  (``load_dataset`` patched inside ``fastdiffusion.training.loop`` while the Trainer is built); nothing else changes.
  Checkpoints are not written (the script calls ``train_step`` itself in a temporary run directory).
* **Denoiser error** (EMA and raw weights): RMS over points and coordinates of ``D_model(x, sigma) - D_exact(x,
  sigma)`` for ``x = x0 + sigma n``, x0 ~ mixture (fixed draw), at sigma in ``SIGMAS``.
* **Sampling error** (EMA weights): fixed standard-normal noise (``--n-sample`` points), ``fastdiffusion.sample`` with
  ``heun`` (karras, odd NFE only) and ``dpmpp-2m`` (logsnr) at each NFE in ``NFES``, sigma in [0.002, 80]. Metrics:
  RMS distance ``sqrt(mean ||x - x_exact||^2)`` to the exact PF-ODE endpoint of the same noise
  (``fastdiffusion.bench.edm_exact.exact_endpoint``, DOP853 rtol 1e-10); RMS distance to the model's *own*
  converged endpoint (heun at ``LIMIT_NFE``: pure discretisation error of the learned ODE); sliced W2 to fresh
  mixture samples (``fastdiffusion.metrics.sliced``). The exact denoiser run through the same samplers is the
  discretisation-only baseline.

Run (about 10 minutes on 2 CPU cores, default 5000 steps x 3 seeds x 2 processes)::

    source .venv/bin/activate
    OMP_NUM_THREADS=2 python benchmarks/fdm_training/toy_few_step.py

writes ``benchmarks/fdm_training/toy_few_step.json`` and ``.png``. ``--steps``, ``--seeds``, ``--data`` and ``--out``
change the setup; ``--steps 200 --seeds 1 --out /tmp/x`` is a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import fastdiffusion.training.loop as loop
from fastdiffusion.bench.edm_exact import MixtureDenoiser, exact_endpoint
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data import Dataset
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.data.samples import ArraySamples
from fastdiffusion.metrics.sliced import sliced_wasserstein
from fastdiffusion.plots import figure, save_figure
from fastdiffusion.processes import make_process
from fastdiffusion.samplers import get_sampler, make_sigmas
from fastdiffusion.sampling import sample
from fastdiffusion.training.config import TrainConfig
from fastdiffusion.training.loop import Trainer

HERE = Path(__file__).resolve().parent
PROCESSES = ("edm", "fdm-edm")
SIGMAS = (0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0)
SAMPLERS = ("heun", "dpmpp-2m")
NFES = (4, 5, 6, 7, 8, 9, 10, 11, 15, 20, 21, 35)
LIMIT_SAMPLER, LIMIT_NFE = "heun", 201
HYBRID_SIGMA, HYBRID_MAX_NFE = 3.0, 11
SIGMA_DATA = 0.5
N_PROJECTIONS = 256
SEED_EVAL, SEED_NOISE, SEED_REF, SEED_PROJ, SEED_TRAIN_DATA = 101, 102, 103, 104, 105


# -- data --------------------------------------------------------------------------------------------------------------
def make_mixture(name: str) -> tuple[GaussianMixture, str]:
    """The toy mixture and the recipe that built it."""
    if name == "ring2d":
        ring = GaussianMixture.ring2d()
        return GaussianMixture(ring.means * 0.5, ring.variances * 0.25, ring.weights), "GaussianMixture.ring2d() x 0.5"
    if name == "random8":
        base = GaussianMixture.random(8, 16, seed=8, spread=1.0, component_std=0.3)
        c = SIGMA_DATA / float(base.variance().mean().sqrt())
        mix = GaussianMixture((base.means - base.mean()) * c, base.variances * c**2, base.weights)
        recipe = (f"GaussianMixture.random(8, 16, seed=8, spread=1.0, component_std=0.3), centred, x {c:.6f} "
                  f"(mean per-coordinate variance {SIGMA_DATA**2})")
        return mix, recipe
    raise SystemExit(f"unknown --data {name!r}: use random8 or ring2d")


def covariance(mix: GaussianMixture) -> Tensor:
    """Full covariance of the mixture: sum_k w_k (diag v_k + mu_k mu_k^T) - m m^T."""
    m = mix.mean()
    second = (mix.weights[:, None, None] * (torch.diag_embed(mix.variances)
                                            + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    return second - torch.outer(m, m)


@contextlib.contextmanager
def dataset_swapped(data: Dataset) -> Iterator[None]:
    """Make the Trainer load ``data`` whatever its config names (restored afterwards)."""
    original = loop.load_dataset
    loop.load_dataset = lambda *args, **kwargs: data
    try:
        yield
    finally:
        loop.load_dataset = original


# -- training ----------------------------------------------------------------------------------------------------------
def train_config(process: str, seed: int, args: argparse.Namespace, run_dir: str) -> TrainConfig:
    return TrainConfig(run_dir=run_dir, data=f"toy-{args.data}", process=process, net="mlp", batch=args.batch,
                       steps=args.steps, lr=args.lr, lr_warmup=100, seed=seed, device="cpu", precision="fp32",
                       compile=False, log_every=10**9, ckpt_every=10**9)


def train(process: str, seed: int, data: Dataset, args: argparse.Namespace) -> dict:
    """Train one model; returns its EMA and raw denoisers and the loss curve."""
    with tempfile.TemporaryDirectory() as run_dir, dataset_swapped(data):
        cfg = train_config(process, seed, args, run_dir)
        trainer = Trainer(cfg, quiet=True)
        try:
            t0, curve, acc, n = time.perf_counter(), [], 0.0, 0
            every = max(args.steps // 20, 1)
            while trainer.step < cfg.steps:
                loss, bad = trainer.train_step()
                acc, n = acc + float(loss), n + 1 - int(bad)
                if trainer.step % every == 0 or trainer.step == cfg.steps:
                    curve.append([trainer.step, acc / max(n, 1)])
                    acc, n = 0.0, 0
            seconds = time.perf_counter() - t0
        finally:
            trainer.close()
    return {"ema": trainer.ema.model.eval(), "raw": trainer.model.eval(), "loss_curve": curve,
            "train_seconds": seconds, "config": cfg.to_json()}


# -- measurements ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def denoiser_rms(model, mix: GaussianMixture, x0: Tensor, noise: Tensor) -> list[float]:
    """RMS of D_model - D_exact over x ~ p_sigma at each of SIGMAS."""
    out = []
    for s in SIGMAS:
        x = x0 + s * noise
        d_model = model(x.float(), torch.full((len(x),), s, dtype=torch.float64)).double()
        out.append(float((d_model - mix.denoise(x, s)).square().mean().sqrt()))
    return out


def rms_dist(x: Tensor, y: Tensor) -> float:
    """sqrt(mean over points of ||x - y||^2)."""
    return float((x.double() - y.double()).square().sum(1).mean().sqrt())


def sw2(x: Tensor, ref: Tensor) -> float:
    return sliced_wasserstein(x, ref, N_PROJECTIONS, torch.Generator().manual_seed(SEED_PROJ))


def nfes_for(sampler: str) -> list[int]:
    spec = get_sampler(sampler)
    ok = []
    for nfe in NFES:
        try:
            spec.steps(nfe)
        except Exception:  # heun: even NFE impossible
            continue
        ok.append(nfe)
    return ok


@torch.no_grad()
def sampling_errors(model, z: Tensor, exact: Tensor, ref: Tensor, limit: Tensor | None) -> dict:
    """{sampler: {nfe: metrics}} for ``model`` started from noise ``z`` (scaled by sigma_max inside ``sample``)."""
    res: dict = {}
    for name in SAMPLERS:
        res[name] = {}
        for nfe in nfes_for(name):
            x = sample(model, z, sampler=name, nfe=nfe).double()
            row = {"rms_to_exact": rms_dist(x, exact), "sw2": sw2(x, ref)}
            if limit is not None:
                row["rms_to_own_limit"] = rms_dist(x, limit)
            res[name][str(nfe)] = row
    return res


class ExactAbove:
    """The exact mixture denoiser where sigma > ``threshold``, ``model`` at and below it (a causal probe: does
    replacing the high-noise denoiser by the exact one remove the few-step gap?)."""

    def __init__(self, model, oracle: MixtureDenoiser, threshold: float) -> None:
        self.model, self.oracle, self.threshold = model, oracle, threshold

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        if s > self.threshold:
            return self.oracle(x.double(), s).to(x.dtype)
        return self.model(x, sigma)


@torch.no_grad()
def hybrid_errors(model, oracle: MixtureDenoiser, z: Tensor, exact: Tensor) -> dict:
    """{sampler: {nfe: rms_to_exact}} with the exact denoiser above HYBRID_SIGMA, NFE <= HYBRID_MAX_NFE."""
    probe = ExactAbove(model, oracle, HYBRID_SIGMA)
    return {name: {str(nfe): rms_dist(sample(probe, z, sampler=name, nfe=nfe), exact)
                   for nfe in nfes_for(name) if nfe <= HYBRID_MAX_NFE} for name in SAMPLERS}


def sigma_grids() -> dict:
    """The noise levels each (sampler, NFE) steps through (the denoiser is called at these, not at the final 0)."""
    return {name: {str(nfe): [round(float(v), 4) for v in make_sigmas(get_sampler(name).schedule,
                                                                      get_sampler(name).steps(nfe), 0.002, 80.0,
                                                                      7.0)]
                   for nfe in nfes_for(name)} for name in SAMPLERS}


def mean_sd(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for proc in PROCESSES:
        mine = [r for r in runs if r["process"] == proc]
        s: dict = {
            "final_loss": mean_sd([r["final_loss"] for r in mine]),
            "denoiser_rms": {w: {str(sig): mean_sd([r["denoiser_rms"][w][i] for r in mine])
                                 for i, sig in enumerate(SIGMAS)} for w in ("ema", "raw")},
            "limit_rms_to_exact": mean_sd([r["limit_rms_to_exact"] for r in mine]),
            "sampling": {},
            "exact_above_sigma": {name: {nfe: mean_sd([r["exact_above_sigma"][name][nfe] for r in mine])
                                         for nfe in mine[0]["exact_above_sigma"][name]} for name in SAMPLERS},
        }
        for name in SAMPLERS:
            s["sampling"][name] = {}
            for nfe in mine[0]["sampling"][name]:
                s["sampling"][name][nfe] = {k: mean_sd([r["sampling"][name][nfe][k] for r in mine])
                                            for k in mine[0]["sampling"][name][nfe]}
        out[proc] = s
    a, b = out["fdm-edm"], out["edm"]
    out["ratio_fdm_over_edm"] = {
        "denoiser_rms_ema": {sig: a["denoiser_rms"]["ema"][sig]["mean"] / b["denoiser_rms"]["ema"][sig]["mean"]
                             for sig in a["denoiser_rms"]["ema"]},
        "sampling": {name: {nfe: {k: a["sampling"][name][nfe][k]["mean"] / b["sampling"][name][nfe][k]["mean"]
                                  for k in a["sampling"][name][nfe]} for nfe in a["sampling"][name]}
                     for name in SAMPLERS},
        "exact_above_sigma": {name: {nfe: v["mean"] / b["exact_above_sigma"][name][nfe]["mean"]
                                     for nfe, v in a["exact_above_sigma"][name].items()} for name in SAMPLERS},
    }
    return out


# -- output ------------------------------------------------------------------------------------------------------------
def plot(result: dict, path: Path) -> None:
    import matplotlib.ticker

    colors = {"edm": "tab:blue", "fdm-edm": "tab:orange", "exact": "black"}
    styles = {"heun": "-", "dpmpp-2m": "--"}
    fig, axes = figure(ncols=3, figsize=(17, 5))
    ax = axes[0]
    sig = np.asarray(SIGMAS)
    for proc in PROCESSES:
        vals = np.array([r["denoiser_rms"]["ema"] for r in result["runs"] if r["process"] == proc])
        ax.plot(sig, vals.mean(0), "o-", color=colors[proc], label=f"{proc} (EMA, mean of {len(vals)} seeds)")
        ax.fill_between(sig, vals.min(0), vals.max(0), color=colors[proc], alpha=0.25)
    ax.axvspan(5, 50, color="grey", alpha=0.1, label="sigma 5-50")
    ax.set(xscale="log", yscale="log", xlabel="sigma", ylabel="RMS of D_model - D_exact",
           title="denoiser error vs sigma (band: min-max over seeds)")
    ax.legend(fontsize=8)
    own = f"RMS distance to own {LIMIT_SAMPLER} {LIMIT_NFE}-NFE endpoint"
    for ax, key, title in ((axes[1], "rms_to_exact", "sampling: RMS distance to exact PF-ODE endpoint"),
                           (axes[2], "rms_to_own_limit", own)):
        for name in SAMPLERS:
            for proc in PROCESSES:
                rows = [r["sampling"][name] for r in result["runs"] if r["process"] == proc]
                nfes = [int(k) for k in rows[0]]
                vals = np.array([[row[str(n)][key] for n in nfes] for row in rows])
                ax.plot(nfes, vals.mean(0), styles[name], marker="o", ms=3, color=colors[proc], label=f"{proc} {name}")
                ax.fill_between(nfes, vals.min(0), vals.max(0), color=colors[proc], alpha=0.2)
            exact = result["exact_baseline"][name]
            nfes = [int(k) for k in exact]
            ax.plot(nfes, [exact[str(n)]["rms_to_exact"] for n in nfes], styles[name], marker="s", ms=3,
                    color=colors["exact"], label=f"exact denoiser {name} (to exact endpoint)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=key, title=title)
        ax.set_xticks(list(NFES), [str(n) for n in NFES], fontsize=7)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
    fig.suptitle(f"EDM vs FDM-EDM on a toy mixture ({result['config']['data']}, {result['config']['steps']} steps, "
                 f"{result['config']['seeds']} seeds)")
    fig.tight_layout()
    save_figure(fig, path)


def fmt_table(result: dict) -> str:
    s = result["summary"]
    lines = ["sigma   input_std(edm) input_std(fdm)  D-err edm          D-err fdm          fdm/edm"]
    for i, sig in enumerate(SIGMAS):
        a, b = s["edm"]["denoiser_rms"]["ema"][str(sig)], s["fdm-edm"]["denoiser_rms"]["ema"][str(sig)]
        std = result["net_input_std"]
        lines.append(f"{sig:<7g} {std['edm'][i]:<14.3g} {std['fdm-edm'][i]:<15.3g}"
                     f" {a['mean']:.3e}±{a['sd']:.1e}  {b['mean']:.3e}±{b['sd']:.1e}  {b['mean'] / a['mean']:.2f}")
    for name in SAMPLERS:
        def hybrid(nfe: str, name: str = name) -> str:
            h = [s[p]["exact_above_sigma"][name].get(nfe) for p in PROCESSES]
            return "" if h[0] is None else f" | {h[0]['mean']:.4f} {h[1]['mean']:.4f}"

        lines.append(f"\n{name}: NFE | rms_to_exact edm, fdm, exact-D | rms_to_own_limit edm, fdm | "
                     f"sw2 edm, fdm, exact-D | rms_to_exact with exact D above sigma {HYBRID_SIGMA:g}: edm, fdm")
        for nfe, row in s["edm"]["sampling"][name].items():
            f = s["fdm-edm"]["sampling"][name][nfe]
            e = result["exact_baseline"][name][nfe]
            lines.append(f"{nfe:>4} | {row['rms_to_exact']['mean']:.4f} {f['rms_to_exact']['mean']:.4f} "
                         f"{e['rms_to_exact']:.4f} | {row['rms_to_own_limit']['mean']:.4f} "
                         f"{f['rms_to_own_limit']['mean']:.4f} | {row['sw2']['mean']:.4f} {f['sw2']['mean']:.4f} "
                         f"{e['sw2']:.4f}" + hybrid(nfe))
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="random8", choices=("random8", "ring2d"))
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-points", type=int, default=500_000)
    p.add_argument("--n-eval", type=int, default=4000, help="points per sigma for the denoiser error")
    p.add_argument("--n-sample", type=int, default=2000, help="noise draws for the sampling error")
    p.add_argument("--n-ref", type=int, default=10_000, help="fresh mixture samples for sliced W2")
    p.add_argument("--out", default=str(HERE / "toy_few_step"), help="output path without extension")
    args = p.parse_args()
    t_start = time.perf_counter()

    mix, recipe = make_mixture(args.data)
    x_train = mix.sample(args.train_points, torch.Generator().manual_seed(SEED_TRAIN_DATA), dtype=torch.float32)
    data = Dataset(ArraySamples(x_train.numpy()), "points", f"toy-{args.data}", (x_train.shape[1],), gmm=mix)
    eig = torch.linalg.eigvalsh(covariance(mix)).tolist()
    x0 = mix.sample(args.n_eval, torch.Generator().manual_seed(SEED_EVAL))
    eval_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED_EVAL + 1000), dtype=torch.float64)
    z = torch.randn(args.n_sample, mix.dim, generator=torch.Generator().manual_seed(SEED_NOISE), dtype=torch.float64)
    ref = mix.sample(args.n_ref, torch.Generator().manual_seed(SEED_REF))

    t0 = time.perf_counter()
    exact, nfev = exact_endpoint(mix, z * 80.0)
    exact_seconds = time.perf_counter() - t0
    oracle = MixtureDenoiser(mix)
    exact_baseline = sampling_errors(oracle, z, exact, ref, None)
    exact_limit = sample(oracle, z, sampler=LIMIT_SAMPLER, nfe=LIMIT_NFE).double()
    print(f"exact endpoints: {nfev} RHS evaluations, {exact_seconds:.1f}s; exact-D {LIMIT_SAMPLER} {LIMIT_NFE} vs "
          f"exact: {rms_dist(exact_limit, exact):.2e}; sw2 floor {sw2(exact, ref):.4f}", flush=True)

    sig = torch.tensor(SIGMAS, dtype=torch.float64)
    input_std = {}
    for proc in PROCESSES:
        c_in = make_process(proc).precond(sig).c_in
        input_std[proc] = (c_in * (sig**2 + SIGMA_DATA**2).sqrt()).tolist()

    runs, train_cfg = [], None
    for seed in range(args.seeds):
        for proc in PROCESSES:
            tr = train(proc, seed, data, args)
            train_cfg = {k: v for k, v in tr["config"].items() if k not in ("run_dir", "process")}
            t0 = time.perf_counter()
            ema = tr["ema"]
            limit = sample(ema, z, sampler=LIMIT_SAMPLER, nfe=LIMIT_NFE).double()
            run = {
                "process": proc, "seed": seed, "train_seconds": tr["train_seconds"], "loss_curve": tr["loss_curve"],
                "final_loss": tr["loss_curve"][-1][1],
                "denoiser_rms": {w: denoiser_rms(tr[w], mix, x0, eval_noise) for w in ("ema", "raw")},
                "limit_rms_to_exact": rms_dist(limit, exact),
                "limit_sw2": sw2(limit, ref),
                "sampling": sampling_errors(ema, z, exact, ref, limit),
                "exact_above_sigma": hybrid_errors(ema, oracle, z, exact),
            }
            run["eval_seconds"] = time.perf_counter() - t0
            runs.append(run)
            h5, d4 = run["sampling"]["heun"]["5"], run["sampling"]["dpmpp-2m"]["4"]
            print(f"{proc:8s} seed {seed}: train {run['train_seconds']:.0f}s loss {run['final_loss']:.4f} | D-err@20 "
                  f"{run['denoiser_rms']['ema'][SIGMAS.index(20.0)]:.2e} | limit->exact "
                  f"{run['limit_rms_to_exact']:.4f} | heun5 {h5['rms_to_exact']:.4f} dpmpp2m4 "
                  f"{d4['rms_to_exact']:.4f} | eval {run['eval_seconds']:.0f}s", flush=True)

    result = {
        "provenance": provenance("cpu"),
        "config": {
            "data": args.data, "mixture": recipe, "dim": mix.dim, "n_components": mix.n_components,
            "covariance_eigenvalues": eig, "per_coordinate_std": mix.variance().sqrt().tolist(),
            "train_points": args.train_points, "steps": args.steps, "seeds": args.seeds, "batch": args.batch,
            "lr": args.lr, "train_config": train_cfg, "weights_for_sampling": "ema",
            "sigmas": list(SIGMAS), "samplers": list(SAMPLERS), "nfes": list(NFES),
            "schedules": {n: get_sampler(n).schedule for n in SAMPLERS}, "sigma_range": [0.002, 80.0],
            "n_eval": args.n_eval, "n_sample": args.n_sample, "n_ref": args.n_ref, "n_projections": N_PROJECTIONS,
            "limit": f"{LIMIT_SAMPLER} {LIMIT_NFE} NFE", "sigma_grids": sigma_grids(),
            "exact_above_sigma": {"threshold": HYBRID_SIGMA, "max_nfe": HYBRID_MAX_NFE,
                                  "what": "sampling with the exact denoiser at sigma > threshold, the model below"},
            "exact_endpoint": "DOP853 rtol 1e-10, then D(x; 0.002)",
            "seeds_fixed": {"eval": SEED_EVAL, "noise": SEED_NOISE, "ref": SEED_REF, "proj": SEED_PROJ,
                            "train_data": SEED_TRAIN_DATA},
        },
        "net_input_std": input_std,
        "exact_endpoint": {"rhs_evaluations": nfev, "seconds": exact_seconds,
                           "sw2_floor": sw2(exact, ref),
                           "exact_denoiser_limit_rms_to_exact": rms_dist(exact_limit, exact)},
        "exact_baseline": exact_baseline,
        "runs": runs,
    }
    result["summary"] = summarise(runs)
    result["total_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), result)
    plot(result, out.with_suffix(".png"))
    print(fmt_table(result))
    print(f"total {result['total_seconds']:.0f}s; wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
