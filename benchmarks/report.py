"""Tables, plots and summary JSONs of the digits32 GPU studies, from the result files committed beside this script.

    python benchmarks/report.py          # rewrites benchmarks/*/results.md, *.png and summary.json files

Inputs (each records its own command, device, versions and commit): ``fdm_training/*.json``,
``fdm_training/seeds/*.json``, ``cunet/*.json``, ``psld_digits/psld.json``, ``dsno/{eval,traj_speed}.json``,
``perf/log-*.jsonl`` (+ ``cunet/info-*.json`` for the device and commit of that call).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from fastdiffusion.plots import figure, save_figure

HERE = Path(__file__).resolve().parent
PAIRS = [("edm", "fdm-edm"), ("edm-s1", "fdm-edm-s1"), ("vp", "fdm-vp"), ("ve", "fdm-ve"), ("edm-tiny", "fdm-edm-tiny"),
         ("edm", "fdm-edm-m1"), ("edm", "fdm-edm-nowarmup")]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def write(path: Path, text: str) -> None:
    path.write_text(text)
    print("wrote", path.relative_to(HERE.parent))


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def kimg_to_reach(curve: list[dict], target: float) -> float | None:
    """First evaluated kimg whose FD is <= target (None if never)."""
    return next((c["kimg"] for c in curve if c["fd"] <= target), None)


# -- issue 3 -------------------------------------------------------------------------------------------------------
def fdm() -> None:
    folder = HERE / "fdm_training"
    runs = {p.stem: load(p) for p in sorted(folder.glob("*.json")) if p.stem not in ("summary", "toy_few_step")}
    rows, summary = [], []
    for base, var in PAIRS:
        b, v = runs[base]["curve"], runs[var]["curve"]
        kimg = min(b[-1]["kimg"], v[-1]["kimg"])  # compare at the kimg both reached
        b_end = [c for c in b if c["kimg"] <= kimg][-1]
        need = kimg_to_reach(v, b_end["fd"])
        ratio = None if need is None else need / b_end["kimg"]
        v_there = [c for c in v if c["kimg"] <= kimg][-1]["fd"]
        summary.append({"baseline": base, "variant": var, "compared_at_kimg": b_end["kimg"],
                        "baseline_final_fd": b_end["fd"], "variant_fd_there": v_there,
                        "variant_kimg_to_reach_baseline_final": need, "ratio": ratio})
        rows.append(f"| {var} vs {base} | {b_end['kimg']:.0f} | {b_end['fd']:.0f} | "
                    f"{summary[-1]['variant_fd_there']:.0f} | {fmt(need, 3)} | {fmt(ratio, 2)} |")
    (folder / "summary.json").write_text(json.dumps({"source": "benchmarks/report.py", "pairs": summary}, indent=1))
    kimgs = sorted({round(c["kimg"]) for r in runs.values() for c in r["curve"]})
    curve_rows = [f"| {n} | " + " | ".join(next((f"{c['fd']:.0f}" for c in r["curve"] if round(c["kimg"]) == k), "")
                                          for k in kimgs) + " |" for n, r in runs.items()]
    sweep_cols = [("heun", n) for n in (5, 7, 9, 13, 19, 35)] + [("dpmpp-2m", n) for n in (4, 6, 8, 10, 15, 20)]
    sweep_rows = []
    for n, r in runs.items():
        got = {(s["sampler"], s["nfe"]): s["fd"] for s in r["sweep"]}
        sweep_rows.append(f"| {n} | " + " | ".join(f"{got[c]:.0f}" if c in got else "" for c in sweep_cols) + " |")
    md = ["# FDM vs baseline on 32-px digits (issue 3)", "",
          "Driver: `benchmarks/digits32/study_gpu.sh` (one device call, 2 × H200, 14 runs sharing the two GPUs, "
          "each stopped after 340 s of training); per run `benchmarks/digits32/train_eval.py`. Every run: digits32 "
          "train split (1,437), batch 256, Adam lr 1e-3, 200-step warm-up, EMA half-life 50 kimg, bf16 eager; "
          "`ddpmpp-small` (7.0M) unless `-tiny` (`ddpmpp-tiny`); seed 0 unless `-s1`. FD-digits of 1,000 EMA "
          "samples (heun 35 NFE, seeds 0–999) vs the 360-image test split every 80 kimg. The runs differ in speed "
          "(they shared GPUs), so they reached different kimg; pairs are compared at the kimg both reached.", "",
          "## Training images to reach the baseline's FD", "",
          "| pair | kimg compared | baseline FD | variant FD there | variant kimg to reach baseline FD | ratio |",
          "|---|---|---|---|---|---|", *rows, "",
          "ratio = (kimg at which the variant first evaluates at or below the baseline's FD) / (baseline kimg); "
          "the claim is ≤ 0.5. With evaluations every 80 kimg a ratio of 0.5 is the finest resolution below 1 at "
          "160 kimg.", "", "## FD vs kimg", "", "| run | " + " | ".join(str(k) for k in kimgs) + " |",
          "|---|" + "---|" * len(kimgs), *curve_rows, "", "## FD vs NFE of the final models", "",
          "| run | " + " | ".join(f"{s} {n}" for s, n in sweep_cols) + " |", "|---|" + "---|" * len(sweep_cols),
          *sweep_rows, "", "Plots: `fd_vs_kimg.png`, `fd_vs_nfe.png`. The earlier pilot (longer, one pair per GPU) "
          "is in `pilot/`.", ""]
    write(folder / "results.md", "\n".join(md))

    fig, axes = figure(ncols=2, figsize=(12, 4.2))
    for ax, names in zip(axes, (["edm", "fdm-edm", "edm-s1", "fdm-edm-s1", "vp", "fdm-vp", "ve", "fdm-ve"],
                                ["edm", "fdm-edm", "fdm-edm-m1", "fdm-edm-nowarmup", "edm-tiny", "fdm-edm-tiny"]),
                         strict=True):
        for n in names:
            c = runs[n]["curve"]
            ax.plot([x["kimg"] for x in c], [x["fd"] for x in c], "--" if n.startswith("fdm") else "-", marker="o",
                    ms=3, label=n)
        ax.set_yscale("log")
        ax.set_xlabel("training images (k)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("FD-digits (heun 35, EMA, n=1000)")
    axes[0].set_title("pairs and a second seed")
    axes[1].set_title("FDM ablations: multiplier, warm-up, network size")
    save_figure(fig, folder / "fd_vs_kimg.png")
    fig, axes = figure(ncols=2, figsize=(12, 4.2), sharey=True)
    for ax, sampler in zip(axes, ("heun", "dpmpp-2m"), strict=True):
        for n in ("edm", "fdm-edm", "edm-s1", "fdm-edm-s1", "vp", "fdm-vp", "ve", "fdm-ve", "edm-tiny",
                  "fdm-edm-tiny"):
            pts = [(s["nfe"], s["fd"]) for s in runs[n]["sweep"] if s["sampler"] == sampler]
            if pts:
                ax.plot(*zip(*pts, strict=True), "--" if n.startswith("fdm") else "-", marker="o", ms=3, label=n)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(f"final models, {sampler}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FD-digits (n=1000)")
    axes[1].legend(fontsize=8)
    save_figure(fig, folder / "fd_vs_nfe.png")


def fdm_seeds() -> None:
    """``fdm_training/seeds/`` (``seeds_gpu.sh``): the EDM pair over three seeds, with the seed-to-seed spread."""
    folder = HERE / "fdm_training" / "seeds"
    runs = {p.stem: load(p) for p in sorted(folder.glob("*-s[0-9].json"))}
    seeds = sorted({n.rsplit("-s", 1)[1] for n in runs})
    kimgs = [round(c["kimg"]) for c in runs[f"edm-s{seeds[0]}"]["curve"]]

    def fd_at(name: str) -> list[float]:
        return [c["fd"] for c in runs[name]["curve"]]

    pairs = []
    for seed in seeds:
        base, var = fd_at(f"edm-s{seed}"), runs[f"fdm-edm-s{seed}"]["curve"]
        need = kimg_to_reach(var, base[-1])
        pairs.append({"seed": int(seed), "baseline_final_kimg": kimgs[-1], "baseline_final_fd": base[-1],
                      "variant_final_fd": var[-1]["fd"], "variant_kimg_to_reach_baseline_final": need,
                      "ratio": None if need is None else need / kimgs[-1]})
    stats = {p: [(statistics.mean(v), statistics.stdev(v)) for v in zip(*(fd_at(f"{p}-s{s}") for s in seeds),
                                                                           strict=True)]
             for p in ("edm", "fdm-edm")}
    diffs = [[a - b for a, b in zip(fd_at(f"fdm-edm-s{s}"), fd_at(f"edm-s{s}"), strict=True)] for s in seeds]
    sweep_cols = [(s["sampler"], s["nfe"]) for s in runs[f"edm-s{seeds[0]}"]["sweep"]]
    sweep = {p: [[next(x["fd"] for x in runs[f"{p}-s{s}"]["sweep"] if (x["sampler"], x["nfe"]) == c) for s in seeds]
                 for c in sweep_cols] for p in ("edm", "fdm-edm")}
    (folder / "summary.json").write_text(json.dumps(
        {"source": "benchmarks/report.py", "kimg": kimgs, "pairs": pairs,
         "mean_sd_fd": {p: [list(x) for x in v] for p, v in stats.items()},
         "fdm_minus_edm_same_seed": diffs}, indent=1))

    def ms(v: tuple[float, float]) -> str:
        return f"{v[0]:.0f} ± {v[1]:.0f}"

    md = ["# FDM-EDM vs EDM over three seeds (issue 3)", "",
          "Driver: `benchmarks/fdm_training/seeds_gpu.sh` (`OUT=... GPU=0 TRAIN_S=360 SWEEP_S=450 EVAL_KIMG=50`), one "
          "device call on one H200: the six runs (edm, fdm-edm × seeds 0, 1, 2) trained side by side on the one GPU, "
          "each stopped 360 s after its start (compile included): `ddpmpp-small` (7.0M), digits32 train split "
          "(1,437), batch 256, Adam lr 1e-3, 200-step warm-up, EMA half-life 50 kimg, bf16 + channels_last + "
          "torch.compile. FD-digits of 1,000 EMA samples (heun 35, seeds 0–999) vs the 360-image test split every "
          "50 kimg; then FD vs NFE of the final (300-kimg) models. The seed sets weights, data order and noise.", "",
          "## Training images to reach the baseline's final FD", "",
          "| seed | EDM FD at 300 kimg | FDM-EDM FD at 300 kimg | FDM-EDM kimg to reach EDM's final FD | ratio |",
          "|---|---|---|---|---|",
          *[f"| {r['seed']} | {r['baseline_final_fd']:.0f} | {r['variant_final_fd']:.0f} | "
            f"{fmt(r['variant_kimg_to_reach_baseline_final'], 3)} | {fmt(r['ratio'], 2)} |" for r in pairs], "",
          "The claim is a ratio ≤ 0.5; – means never within the 300 kimg.", "",
          "## FD vs kimg, mean ± standard deviation over the seeds", "",
          "| run | " + " | ".join(str(k) for k in kimgs) + " |", "|---|" + "---|" * len(kimgs),
          *[f"| {p} | " + " | ".join(ms(v) for v in stats[p]) + " |" for p in stats],
          "| FDM − EDM, same seed (per seed) | " + " | ".join(
              " / ".join(f"{d[i]:+.0f}" for d in diffs) for i in range(len(kimgs))) + " |", "",
          "## FD vs NFE of the final models, mean ± sd (per seed)", "",
          "| sampler NFE | EDM | FDM-EDM |", "|---|---|---|",
          *[f"| {c[0]} {c[1]} | {ms((statistics.mean(e), statistics.stdev(e)))} ({' / '.join(f'{x:.0f}' for x in e)})"
            f" | {ms((statistics.mean(f), statistics.stdev(f)))} ({' / '.join(f'{x:.0f}' for x in f)}) |"
            for c, e, f in zip(sweep_cols, sweep["edm"], sweep["fdm-edm"], strict=True)], "",
          "Plot: `seeds.png` (band: min–max over the seeds).", ""]
    write(folder / "results.md", "\n".join(md))
    fig, axes = figure(ncols=2, figsize=(12, 4.2))
    for p, style in (("edm", "-"), ("fdm-edm", "--")):
        each = [fd_at(f"{p}-s{s}") for s in seeds]
        axes[0].plot(kimgs, [m for m, _ in stats[p]], style, marker="o", ms=3, label=f"{p} (mean of {len(seeds)})")
        axes[0].fill_between(kimgs, [min(v) for v in zip(*each, strict=True)],
                             [max(v) for v in zip(*each, strict=True)], alpha=0.2)
        for sampler, ax_style in (("heun", "o"), ("dpmpp-2m", "s")):
            idx = [i for i, c in enumerate(sweep_cols) if c[0] == sampler]
            nfe = [sweep_cols[i][1] for i in idx]
            axes[1].errorbar(nfe, [statistics.mean(sweep[p][i]) for i in idx],
                             yerr=[statistics.stdev(sweep[p][i]) for i in idx], fmt=style + ax_style, ms=3,
                             capsize=2, label=f"{p}, {sampler}")
    axes[0].set(yscale="log", xlabel="training images (k)", ylabel="FD-digits (heun 35, EMA, n=1000)",
                title="FD vs training, 3 seeds")
    axes[1].set(xscale="log", yscale="log", xlabel="NFE", title="final models (300 kimg): FD vs NFE, mean ± sd")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, folder / "seeds.png")


# -- issue 7 -------------------------------------------------------------------------------------------------------
def cunet() -> None:
    folder = HERE / "cunet"
    bench = load(folder / "cunet_bench.json")["models"]
    curves = {"cunet-small": load(folder / "cunet-small.json")["curve"],
              "ddpmpp-small": load(folder / "ddpmpp-small.json")["curve"]}
    info = {n: {g: load(folder / f"info-{n}{g}.json") for g in ("", "-graphs")} for n in curves}
    c, b = bench["cunet-small"], bench["ddpmpp-small"]
    kimg = curves["ddpmpp-small"][-1]["kimg"]
    fd_base = curves["ddpmpp-small"][-1]["fd"]
    same_img = next(x["fd"] for x in curves["cunet-small"] if abs(x["kimg"] - kimg) < 1)
    wall_kimg = kimg * b["train_s_per_kimg"] / c["train_s_per_kimg"]  # cunet kimg in the baseline's training time

    def interp(curve: list[dict], k: float) -> float:
        for lo, hi in zip(curve, curve[1:], strict=False):
            if lo["kimg"] <= k <= hi["kimg"]:
                return lo["fd"] + (hi["fd"] - lo["fd"]) * (k - lo["kimg"]) / (hi["kimg"] - lo["kimg"])
        raise ValueError(k)

    same_wall = interp(curves["cunet-small"], wall_kimg)
    summary = {"baseline_kimg": kimg, "baseline_fd": fd_base, "cunet_fd_same_images": same_img,
               "cunet_kimg_same_wallclock": wall_kimg, "cunet_fd_same_wallclock_interpolated": same_wall,
               "params_ratio": c["parameters"] / b["parameters"],
               "flops_ratio": c["flops_per_call"] / b["flops_per_call"],
               "latency_b1_eager_ms": {n: info[n][""]["latency_s"]["1"] * 1e3 for n in info},
               "latency_b1_cuda_graphs_ms": {n: info[n]["-graphs"]["latency_s"]["1"] * 1e3 for n in info},
               "latency_b256_cuda_graphs_ms": {n: info[n]["-graphs"]["latency_s"]["256"] * 1e3 for n in info}}
    (folder / "summary.json").write_text(json.dumps({"source": "benchmarks/report.py", **summary}, indent=1))
    lat = summary
    rows = [f"| {n} | {m['parameters'] / 1e6:.2f}M | {m['flops_per_call'] / 1e9:.2f} | "
            f"{info[n]['']['latency_s']['1'] * 1e3:.1f} / {info[n]['-graphs']['latency_s']['1'] * 1e3:.2f} | "
            f"{info[n]['']['latency_s']['256'] * 1e3:.1f} / {info[n]['-graphs']['latency_s']['256'] * 1e3:.1f} | "
            f"{m['train_s_per_kimg']:.3f} | {m['sample_heun35_s']['1']:.2f} / {m['sample_heun35_s']['256']:.2f} |"
            for n, m in bench.items()]
    sig = sorted(c["denoise_psnr_db"], key=float)
    md = ["# Continuous U-Net vs DDPM++ U-Net on 32-px digits (issue 7)", "",
          "Training: `benchmarks/digits32/study_gpu.sh` (EDM process, same data, batch, optimiser and seed; both on "
          "GPU 1/0 of the shared 2 × H200 call, 340 s each). Measurements on an idle H200: `benchmarks/cunet/bench.py` "
          "(same call, after training) and `fastdiffusion info --bf16 [--cuda-graphs]` (`benchmarks/perf/perf_gpu.sh`, "
          "a later call on one H200).", "",
          "| network | params | GFLOP/call | latency b1 ms eager / CUDA graphs | b256 ms eager / graphs | train s/kimg "
          "(eager bf16, b256) | heun-35 sampling s, b1 / b256 |", "|---|---|---|---|---|---|---|", *rows, "",
          f"Ratios: parameters {lat['params_ratio']:.2f}×, FLOPs {lat['flops_ratio']:.2f}×.", "",
          "## Sample quality (FD-digits, heun 35, n = 1000, EMA)", "",
          f"- same training images ({kimg:.0f} kimg): cunet-small **{same_img:.0f}** vs ddpmpp-small **{fd_base:.0f}**",
          f"- same training wall-clock (ddpmpp-small's {kimg:.0f} kimg take as long as {wall_kimg:.0f} kimg of "
          f"cunet-small, from the isolated s/kimg): cunet-small **{same_wall:.0f}** (interpolated)",
          "- curves: " + "; ".join(f"{n}: " + ", ".join(f"{x['kimg']:.0f}k→{x['fd']:.0f}" for x in cv)
                                   for n, cv in curves.items()), "",
          "## Denoising PSNR (dB) vs noise level, test split", "",
          "| network | " + " | ".join(f"σ={s}" for s in sig) + " |", "|---|" + "---|" * len(sig),
          *[f"| {n} | " + " | ".join(f"{m['denoise_psnr_db'][s]:.1f}" for s in sig) + " |" for n, m in bench.items()],
          "", "## Solver ablation (cunet-small trained with RK4 × 1 step; solver swapped at sampling time)", "",
          "| solver | steps | FD heun-35 | latency b256 ms (eager) |", "|---|---|---|---|",
          *[f"| {r['solver']} | {r['steps']} | {r['fd_heun35']:.0f} | {r['latency_b256_s'] * 1e3:.1f} |"
            for r in c["solver_ablation"]], "", *cunet_solvers(folder / "solvers", curves["ddpmpp-small"]),
          "Plot: `cunet.png`.", ""]
    write(folder / "results.md", "\n".join(md))
    fig, axes = figure(ncols=2, figsize=(11, 4))
    for n, cv in curves.items():
        axes[0].plot([x["kimg"] for x in cv], [x["fd"] for x in cv], marker="o", label=n)
        axes[1].plot([float(s) for s in sig], [bench[n]["denoise_psnr_db"][s] for s in sig], marker="o", label=n)
    axes[0].set(yscale="log", xlabel="training images (k)", ylabel="FD-digits (heun 35)", title="FD vs training")
    axes[1].set(xscale="log", xlabel="sigma", ylabel="denoising PSNR (dB)", title="noise robustness")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, folder / "cunet.png")


def cunet_solvers(folder: Path, baseline: list[dict]) -> list[str]:
    """Markdown for ``solvers/`` (``solver_gpu.sh``): cunet-small trained with cheaper solvers, CUDA-graph latency."""
    info = {p.stem.removeprefix("info-"): load(p) for p in sorted(folder.glob("info-*.json"))}
    runs = {p.stem.removeprefix("cunet-"): load(p)["curve"] for p in sorted(folder.glob("cunet-*.json"))}
    base = {round(x["kimg"]): x["fd"] for x in baseline}
    kimgs = sorted(base)
    rows = [f"| {n} | {i['parameters'] / 1e6:.2f}M | {i['flops_per_call']['1'] / 1e9:.2f} | "
            f"{i['latency_s']['1'] * 1e3:.2f} | {i['latency_s']['256'] * 1e3:.2f} |" for n, i in info.items()]
    fd_rows = ["| ddpmpp-small (study) | " + " | ".join(f"{base[k]:.0f}" for k in kimgs) + " | |"]
    for n, cv in runs.items():
        at = {round(x["kimg"]): x["fd"] for x in cv}
        fd_rows.append(f"| cunet-small {n} | " + " | ".join(f"{at[k]:.0f}" for k in kimgs)
                       + f" | {cv[-1]['kimg']:.0f}k: {cv[-1]['fd']:.0f} (best {min(x['fd'] for x in cv):.0f}) |")
    return ["## Cheaper solvers trained as such (`solvers/`, `solver_gpu.sh`, one H200)", "",
            "Latency per call with CUDA graphs (`fastdiffusion info --bf16 --cuda-graphs`, idle GPU, same call):", "",
            "| network | params | GFLOP/call | b1 ms | b256 ms |", "|---|---|---|---|---|", *rows, "",
            "FD-digits (heun 35, n = 1000) vs kimg; the two cunet runs shared one GPU for 211 s (1.1 Mimg each):", "",
            "| run | " + " | ".join(f"{k} kimg" for k in kimgs) + " | last |", "|---|" + "---|" * (len(kimgs) + 1),
            *fd_rows, ""]


# -- issue 4 -------------------------------------------------------------------------------------------------------
def psld() -> None:
    folder = HERE / "psld_digits"
    r = load(folder / "psld.json")
    samplers = list(dict.fromkeys(s["sampler"] for s in r["sweep"]))
    nfes = sorted({s["nfe"] for s in r["sweep"]})
    got = {(s["sampler"], s["nfe"]): s["fd"] for s in r["sweep"]}
    md = ["# PSLD on 32-px digits: samplers at NFE 10, 20, 50 (issue 4)", "",
          f"Model: `ddpmpp-small` with 2 × 1 channels (x, m), PSLD HSM, digits32 train split, batch 256, lr 1e-3, "
          f"{r['curve'][-1]['kimg']:.0f} kimg (one H200 of a 2 × H200 call shared with DSNO students; "
          "`benchmarks/dsno/dsno_gpu.sh` → `benchmarks/digits32/train_eval.py --process psld`). FD-digits of 1,000 "
          "EMA samples (seeds 0–999) vs the test split. Stochastic samplers draw their noise per seed.", "",
          "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes),
          *[f"| {s} | " + " | ".join(f"{got[(s, n)]:.0f}" for n in nfes) + " |" for s in samplers], "",
          "Training curve (csps-d 50): " + ", ".join(f"{c['kimg']:.0f}k→{c['fd']:.0f}" for c in r["curve"]), "",
          "Plot: `fd_vs_nfe.png`.", ""]
    write(folder / "results.md", "\n".join(md))
    fig, ax = figure(figsize=(6, 4))
    for s in samplers:
        ax.plot(nfes, [got[(s, n)] for n in nfes], marker="o", label=s)
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="FD-digits (n=1000)", title="PSLD samplers, digits32")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, folder / "fd_vs_nfe.png")


# -- issue 6 -------------------------------------------------------------------------------------------------------
def dsno() -> None:
    folder = HERE / "dsno"
    ev, sp = load(folder / "eval.json"), load(folder / "traj_speed.json")
    teacher35 = next(t["fd"] for t in ev["teacher"] if t["nfe"] == 35)
    best = {n: min((t for t in ev["teacher"] if t["nfe"] == n), key=lambda t: t["fd"]) for n in (1, 2, 4, 8)}
    steps = {}
    for name in ev["students"]:
        rows = [json.loads(line) for line in (folder / f"log-{name}.jsonl").read_text().splitlines()]
        cfg = load(folder / f"config-{name}.json")
        last = max(r["step"] for r in rows)
        steps[name] = {"steps": last, "batch": cfg["batch"], "trajectories_seen": last * cfg["batch"]}
    srows = [f"| {n} | {s['times']} | {s['config']['modes']} | {steps[n]['steps']} × {steps[n]['batch']} | "
             f"{s['fd']:.1f} | {s['fd'] / teacher35:.2f} | {s['mse_to_heun35']:.4f} |"
             for n, s in ev["students"].items()]
    trows = [f"| {n} | {b['sampler']} | {b['fd']:.0f} |" for n, b in best.items()]
    secs = ev["seconds_per_image"]
    md = ["# DSNO one-call students on 32-px digits (issue 6)", "",
          "Teacher: the EDM `ddpmpp-small` of `benchmarks/digits32/study_gpu.sh` (319 kimg). Driver: "
          "`benchmarks/dsno/dsno_gpu.sh` (2 × H200): 21,000 heun-35 trajectories at M = 4 quadratic output times "
          "(1,000 held out), students trained with the weighted L1 trajectory loss, lr 5e-4, EMA half-life 20k "
          "trajectories, bf16, each stopped by a 300-s limit (the main student alone on one GPU at batch 128, the "
          "ablations side by side on the other at batch 64). Evaluation (`benchmarks/dsno/bench.py eval`): FD-digits "
          "of 1,000 samples from seeds 100000–100999, which no training trajectory uses, vs the test split.", "",
          f"Teacher heun 35 NFE: FD **{teacher35:.1f}**.", "",
          "| student | M | K | steps × batch | FD (1 call) | / teacher-35 | MSE to teacher-35 samples |",
          "|---|---|---|---|---|---|---|", *srows, "",
          "Teacher's best fast sampler per NFE (of euler, dpmpp-2m/3m, ipndm, unipc, lambda-ddim, each also on the "
          "tuned schedule where one exists):", "", "| NFE | best sampler | FD |", "|---|---|---|", *trows, "",
          "Seconds per image (bf16 network; batch 1 / batch 256): " + "; ".join(
              f"{k}: {v['1'] * 1e3:.1f} ms / {v['256'] * 1e3:.3f} ms" for k, v in secs.items()), "",
          f"Trajectory generation vs plain sampling (heun 35, batch 1,000, one H200): "
          f"{sp['trajectories']['seeds_per_s']:.0f} vs {sp['plain']['seeds_per_s']:.0f} seeds/s "
          f"(slowdown {sp['slowdown']:.2f}×, shard writes included).", "", "Plot: `fd_vs_nfe.png`.", ""]
    write(folder / "results.md", "\n".join(md))
    fig, ax = figure(figsize=(6.5, 4))
    for sampler in dict.fromkeys(t["sampler"] for t in ev["teacher"] if t["nfe"] < 35):
        pts = [(t["nfe"], t["fd"]) for t in ev["teacher"] if t["sampler"] == sampler]
        ax.plot(*zip(*pts, strict=True), marker=".", lw=1, alpha=0.7, label=f"teacher {sampler}")
    ax.axhline(teacher35, color="k", ls=":", label="teacher heun 35")
    for n, s in ev["students"].items():
        ax.plot([1], [s["fd"]], marker="*", ms=10, ls="none", label=f"student {n}")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="FD-digits (n=1000)", title="DSNO vs teacher samplers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, folder / "fd_vs_nfe.png")


# -- issue 5 -------------------------------------------------------------------------------------------------------
def loss_curves() -> None:
    folder = HERE / "perf"
    logs = {(m, s): [json.loads(x) for x in (folder / f"log-{m}-s{s}.jsonl").read_text().splitlines()]
            for m in ("fp32", "bf16", "fast") for s in (0, 1)}
    loss = {k: [r["loss"] for r in v if "loss" in r] for k, v in logs.items()}

    def rms(a: list[float], b: list[float], start: int = 20) -> float:  # from step 200: after warm-up
        return math.sqrt(statistics.mean((x - y) ** 2 for x, y in zip(a[start:], b[start:], strict=True)))

    run = load(folder / "loss_provenance.json")  # written by the device script beside the logs it made
    result = {**{k: run[k] for k in ("command", "device", "versions", "git_commit", "timestamp") if k in run},
              "setup": "ddpmpp-small, EDM, digits32 train split, batch 256, 600 steps, lr 1e-3, warm-up 200; "
                       "loss = mean of each 10-step log interval",
              "rms_seed_spread_fp32": rms(loss[("fp32", 0)], loss[("fp32", 1)]),
              "rms_vs_fp32_same_seed": {f"{m}-s{s}": rms(loss[(m, s)], loss[("fp32", s)])
                                        for m in ("bf16", "fast") for s in (0, 1)},
              "img_per_s_side_by_side": {f"{m}-s{s}": statistics.median(r["img_per_s"] for r in logs[(m, s)][5:])
                                         for m, s in logs}}
    (folder / "loss_curves.json").write_text(json.dumps(result, indent=1))
    print("wrote benchmarks/perf/loss_curves.json")
    fig, ax = figure(figsize=(6.5, 4))
    for (m, s), v in loss.items():
        ax.plot([10 * (i + 1) for i in range(len(v))], v, label=f"{m} seed {s}", lw=1,
                ls={"fp32": "-", "bf16": "--", "fast": ":"}[m], color=f"C{s}")
    ax.set(yscale="log", xlabel="step", ylabel="training loss (10-step mean)",
           title="fp32 eager vs bf16 eager vs fast (bf16 + CL + compile)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, folder / "loss_curves.png")


if __name__ == "__main__":
    fdm()
    fdm_seeds()
    cunet()
    psld()
    dsno()
    loss_curves()
