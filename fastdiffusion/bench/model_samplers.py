"""``fastdiffusion bench samplers MODEL``: every sampler × schedule × NFE on a trained model (docs/benchmarks.md).

Per run: FD on the bundled digits classifier (models whose run trained on the digits), the RMS to the endpoint of the
family's ``REFERENCE`` solve from the same noise, the last positive noise level (PSLD: time) and the high-frequency
energy against the reference's (no win by blur). The ``model`` schedule is fitted per sampler and NFE on tuning
seeds disjoint from the evaluation seeds (``samplers.tuning``); ``model+afs`` runs the grid fitted for NFE + 1 calls
with its first call answered by the data's Gaussian denoiser (the analytic first step), so NFE network calls.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..data.stats import resolve_data_stats
from ..errors import UserError
from ..metrics.sharpness import hf_energy, outside_band
from ..models import ProcessModel
from ..plots import figure, save_figure
from ..processes.gaussian_data import GaussianDataStats
from ..samplers import get_sampler, make_sigmas
from ..samplers.learned import ITERATIONS, learn_schedule, learnable_samplers
from ..samplers.tuning import (
    HF_TOLERANCE,  # a grid counts as sharp when its HF energy is within this of the reference's (issue 20)
    fit_schedule,
    objective_description,
    reference_solve,
    resolve_hf_tolerance,
)
from ..sampling import (
    check_gaussian_family,
    check_sampler_args,
    check_teleport_level,
    generate,
    model_process,
    sampling_range,
)
from ..seeds import SeededNoise, format_seeds, parse_seeds
from .provenance import provenance

# Per model family: the table's default samplers and schedules ('model': fitted to this model, ``fastdiffusion
# tune``), and the reference solve every row is compared with (PSLD: CSPS-D, second order, lam from its table).
SAMPLERS = {"edm": ("dpmpp-2m", "dpmpp-3m", "unipc", "ipndm", "lambda-ddim"),
            "psld": ("psld-conj", "csps-d", "rse", "rvv")}
SCHEDULES = {"edm": ("karras", "logsnr", "model"), "psld": ("quadratic", "time-uniform", "model")}
REFERENCE = {"edm": ("heun", 35), "psld": ("csps-d", 100)}
# The schedules fitted to the model; 'model+afs' needs the data statistics, 'learned' learns per-step parameters too
# (samplers.learned: DPM-Solver++ samplers only).
FITTED_SCHEDULES = ("model", "model+afs", "learned")
NFES = (4, 5, 6, 8, 10)
EVAL_SEEDS = "100000-100999"
TUNING_SEEDS = "1000000-1000255"


def trained_on_digits(path: str | Path) -> bool:
    """Whether the run that made the model at ``path`` trained on the bundled digits (its config.json says so)."""
    from ..data import DIGITS_SETS
    from ..metrics.sources import run_training

    training = run_training(Path(path))
    return training is not None and training["data"] in DIGITS_SETS


def run(model: ProcessModel, *, samplers: Sequence[str], schedules: Sequence[str], nfes: Sequence[int],
        eval_seeds: list[int], tuning_seeds: list[int], tune_nfes: Sequence[int], batch: int, max_evals: int,
        device: torch.device, digits: bool, data_stats: GaussianDataStats | None = None,
        teleport: float | None = None, hf_tolerance: float | Literal["auto"] | None = "auto",
        learn_iterations: int = ITERATIONS) -> dict:
    """The table's rows (one per sampler × schedule × NFE that the sampler can make), with the family's reference;
    ``data_stats`` for the ``model+afs`` schedule and for ``teleport``, which every run (the reference's and the
    fits' too) then starts with; ``hf_tolerance`` for the fits (``fit_schedule``), ``learn_iterations`` for the
    ``learned`` rows (``learn_schedule``)."""
    from ..metrics.digits_classifier import fd_digits

    lo, hi = sampling_range(model)
    top = hi if teleport is None else teleport  # where every grid starts
    ref_sampler, ref_nfe = REFERENCE[model.family]
    shortcut = {"teleport": teleport, "data_stats": data_stats}  # statistics alone change nothing (afs needs them)

    def metrics(x: Tensor, ref: Tensor) -> dict:
        out = {"rms_to_reference": float((x - ref).square().mean().sqrt()), "hf_energy": hf_energy(x)}
        if digits:
            out["fd_digits"] = fd_digits(x, "test", device=device)
        return out

    t0 = time.perf_counter()
    ref = generate(model, eval_seeds, batch=batch, device=device, sampler=ref_sampler, nfe=ref_nfe, progress=False,
                   **shortcut)
    reference = {"sampler": ref_sampler, "nfe": ref_nfe, **metrics(ref, ref),
                 "seconds": time.perf_counter() - t0}
    tune_noise = SeededNoise(tuning_seeds).randn(model.data_shape, device)
    tune_ref = reference_solve(model, tune_noise, **shortcut) if set(FITTED_SCHEDULES) & set(schedules) else None
    # (--samplers entry, calls, learned) -> the fitted grid and its tuning record
    fits: dict[tuple[str, int, bool], dict] = {}
    learnable = learnable_samplers()
    rows = []
    for label in samplers:
        name, options = sampler_entry(label)
        spec = get_sampler(name)
        for nfe in nfes:
            try:
                steps = spec.steps(nfe)
            except UserError:
                continue
            for schedule in schedules:
                afs, learned = schedule == "model+afs", schedule == "learned"
                if schedule in FITTED_SCHEDULES and nfe not in tune_nfes or learned and name not in learnable:
                    continue
                if afs:
                    try:
                        check_sampler_args(name, nfe, {}, afs=True)
                    except UserError:
                        continue
                row: dict = {"sampler": label, "schedule": schedule, "nfe": nfe,
                             **({"sampler_options": options} if options else {})}
                hyper: dict = dict(options)
                if schedule in FITTED_SCHEDULES:
                    calls = nfe + afs
                    if (label, calls, learned) not in fits:  # the grid is fitted for the sampler with its options
                        t0 = time.perf_counter()
                        if learned:
                            tuned = learn_schedule(model, sampler=name, nfe=calls, noise=tune_noise,
                                                   reference=tune_ref, iterations=learn_iterations, **options)
                        else:
                            tuned = fit_schedule(model, sampler=name, nfe=calls, noise=tune_noise, reference=tune_ref,
                                                 max_evals=max_evals, hf_tolerance=hf_tolerance, **shortcut,
                                                 **options)
                        fits[label, calls, learned] = {
                            "sigmas": tuned.sigmas, "hyper": tuned.hyper, "tuning_seconds": time.perf_counter() - t0,
                            "tuning_value": tuned.value, "tuning_start": tuned.start,
                            "tuning_evaluations": tuned.evaluations}
                    fit = fits[label, calls, learned]
                    sigmas, hyper = fit["sigmas"], {**options, **fit["hyper"]}
                    row.update({k: v for k, v in fit.items() if k != "sigmas"}, tuning_nfe=calls)
                else:
                    sigmas = make_sigmas(schedule, steps, lo, top)
                x = generate(model, eval_seeds, batch=batch, device=device, sampler=name, nfe=nfe, sigmas=sigmas,
                             progress=False, afs=afs, **shortcut, **hyper)
                row.update(sigmas=sigmas.tolist(), last_sigma=float(sigmas[-2]), **metrics(x, ref))
                # flat reference images have no HF energy to match: no row counts as sharp against them
                row["hf_ratio"] = row["hf_energy"] / reference["hf_energy"] if reference["hf_energy"] > 0 else math.nan
                rows.append(row)
                print(_line(row), flush=True)
    return {"reference": reference, "results": rows}


def sampler_entry(label: str) -> tuple[str, dict]:
    """'ipndm:order=2' -> ('ipndm', {'order': 2}): a ``--samplers`` entry with its sampler options."""
    from ..cli_args import parse_kv

    name, _, rest = label.partition(":")
    options = parse_kv(rest.split(":") if rest else [], f"--samplers {label}")
    unknown = set(options) - set(get_sampler(name).hyper)
    if unknown:
        raise UserError(f"--samplers {label}: sampler '{name}' has no option {', '.join(sorted(unknown))}")
    return name, options


def _line(row: dict) -> str:
    fd = f"FD {row['fd_digits']:.1f} " if "fd_digits" in row else ""
    return (f"{row['sampler']}@{row['schedule']} NFE {row['nfe']}: {fd}RMS {row['rms_to_reference']:.4f} "
            f"last sigma {row['last_sigma']:.3g} HF {row['hf_ratio']:.2f}x")


def markdown(result: dict) -> str:
    """One table per metric: sampler × schedule rows, NFE columns."""
    rows, nfes = result["results"], sorted({r["nfe"] for r in result["results"]})
    ref = result["reference"]
    metric = "fd_digits" if "fd_digits" in ref else "rms_to_reference"
    lines = [f"Reference: {ref['sampler']} {ref['nfe']} NFE" + (f", FD {ref['fd_digits']:.1f}" if "fd_digits" in ref
                                                                 else ""), "",
             f"{metric} (last positive level, HF energy / the reference's)", "",
             "| sampler | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    keys = list(dict.fromkeys((r["sampler"], r["schedule"]) for r in rows))
    for name, schedule in keys:
        cells = []
        for n in nfes:
            r = next((r for r in rows if (r["sampler"], r["schedule"], r["nfe"]) == (name, schedule, n)), None)
            cells.append("–" if r is None else f"{r[metric]:.4g} ({r['last_sigma']:.2g}, {r['hf_ratio']:.2f})")
        lines.append(f"| {name} | {schedule} | " + " | ".join(cells) + " |")
    fitted = fitted_vs_fixed(result)
    if fitted:
        lines += ["", f"Fitted against fixed schedules ({metric}; sharp: HF within {HF_TOLERANCE:.0%} of the "
                  "reference's)",
                  "", "| NFE | best fixed | best fitted | ratio | / reference | HF | best sharp fitted | ratio |",
                  "|---|---|---|---|---|---|---|---|"]

        def cell(r: dict | None) -> str:
            return "–" if r is None else f"{r[metric]:.4g} ({r['sampler']} @ {r['schedule']})"

        for f in fitted:
            best, sharp = f["best_fitted"], f["best_sharp_fitted"]
            to_ref = "–" if f["ratio_to_reference"] is None else f"{f['ratio_to_reference']:.2f}"
            lines.append(f"| {f['nfe']} | {cell(f['best_fixed'])} | {cell(best)} | {f['ratio']:.2f} | {to_ref} | "
                         f"{best['hf_ratio']:.2f} | {cell(sharp)} | "
                         + ("–" if sharp is None else f"{f['sharp_ratio']:.2f}") + " |")
    return "\n".join(lines) + "\n"


def fitted_vs_fixed(result: dict) -> list[dict]:
    """Per NFE with fitted rows: the best fixed-schedule row, the best fitted row and the best fitted row whose HF
    energy is within ``HF_TOLERANCE`` of the reference's, with their ratios (the issue-20 targets)."""
    ref = result["reference"]
    metric = "fd_digits" if "fd_digits" in ref else "rms_to_reference"
    out = []
    for nfe in sorted({r["nfe"] for r in result["results"]}):
        rows = [r for r in result["results"] if r["nfe"] == nfe]
        fixed = [r for r in rows if r["schedule"] not in FITTED_SCHEDULES]
        fitted = [r for r in rows if r["schedule"] in FITTED_SCHEDULES]
        if not fixed or not fitted:
            continue
        best_fixed, best = (min(group, key=lambda r: r[metric]) for group in (fixed, fitted))
        sharp = [r for r in fitted if outside_band(r["hf_ratio"], HF_TOLERANCE) == 0]
        best_sharp = min(sharp, key=lambda r: r[metric]) if sharp else None
        out.append({"nfe": nfe, "best_fixed": best_fixed, "best_fitted": best, "best_sharp_fitted": best_sharp,
                    "ratio": best[metric] / best_fixed[metric],
                    "ratio_to_reference": best[metric] / ref[metric] if ref[metric] else None,  # RMS: 0
                    "sharp_ratio": best_sharp[metric] / best_fixed[metric] if best_sharp else None})
    return out


def plot(result: dict, path: Path) -> None:
    """The metric against NFE, one panel per sampler, one line per schedule, the reference as a horizontal line."""
    rows, ref = result["results"], result["reference"]
    metric = "fd_digits" if "fd_digits" in ref else "rms_to_reference"
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    cols = min(3, len(names))
    fig, axes = figure(nrows=math.ceil(len(names) / cols), ncols=cols, figsize=(4.5 * cols, 3.6 *
                       math.ceil(len(names) / cols)), squeeze=False, constrained_layout=True)
    for ax, name in zip(axes.ravel(), names, strict=False):
        for schedule in dict.fromkeys(r["schedule"] for r in rows):
            pts = sorted((r["nfe"], r[metric]) for r in rows if r["sampler"] == name and r["schedule"] == schedule)
            if pts:
                ax.semilogy(*zip(*pts, strict=True), marker="o", ms=3, label=schedule)
        if metric in ref:
            ax.axhline(ref[metric], color="gray", ls=":", label=f"{ref['sampler']} {ref['nfe']}")
        ax.set_title(name)
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    save_figure(fig, path)


def main(args: argparse.Namespace) -> dict:
    from ..fastpath import accelerate
    from ..models import load_model
    from ..training import distributed

    d = distributed.setup(args.device)
    model = load_model(args.model, device=d.device)
    if model.family not in REFERENCE:
        raise UserError(f"bench samplers MODEL: a {model.family} model has no sampler table (EDM-family and PSLD "
                        f"models do)")
    digits = trained_on_digits(args.model)
    accelerate(model, d.device, compile=False)  # shapes vary between tuning and evaluation: no recompiles
    eval_seeds, tuning_seeds = parse_seeds(args.seeds), parse_seeds(args.tuning_seeds)
    if set(eval_seeds) & set(tuning_seeds):
        raise UserError("--seeds and --tuning-seeds overlap: evaluation must use fresh noise")
    samplers = args.samplers.split(",") if args.samplers else list(SAMPLERS[model.family])
    schedules = args.schedules.split(",") if args.schedules else list(SCHEDULES[model.family])
    if "model+afs" in schedules:
        try:
            check_gaussian_family(model, afs=True)
        except UserError as e:
            raise UserError(f"--schedules model+afs: {e}") from None
    gaussian = "model+afs" in schedules or args.teleport is not None
    if args.data_stats is not None and not gaussian:
        raise UserError("--data-stats is used only by the 'model+afs' schedule and --teleport: add one or drop "
                        "--data-stats")
    if args.teleport is not None:  # before the long reference solve
        check_teleport_level(args.teleport, *sampling_range(model), model_process(model).level_name)
        if "learned" in schedules:
            raise UserError("--schedules learned: learned fits start from sigma_max; drop --teleport or 'learned'")
    data_stats = resolve_data_stats(args.model, args.data_stats, model.data_shape) if gaussian else None
    hf_tolerance = resolve_hf_tolerance(args.hf_tolerance, (1, *model.data_shape), model.family)
    with torch.no_grad():
        result = run(model, samplers=samplers, schedules=schedules, nfes=args.nfe, eval_seeds=eval_seeds,
                     tuning_seeds=tuning_seeds, tune_nfes=args.tune_nfe or args.nfe, batch=args.batch,
                     max_evals=args.max_evals, device=d.device, digits=digits, data_stats=data_stats,
                     teleport=args.teleport, hf_tolerance=hf_tolerance, learn_iterations=args.learn_iterations)
    fd = f"FD-digits vs the digits test split at {model.data_shape[-1]} px" if digits else None
    result["protocol"] = {"model": str(args.model), "eval_seeds": format_seeds(eval_seeds),
                          "tuning_seeds": format_seeds(tuning_seeds), "fd": fd,
                          "reference": f"{result['reference']['sampler']} {result['reference']['nfe']} NFE, same "
                                       "seeds",
                          "hf_energy": "mean squared 3x3 Laplacian at full resolution",
                          "teleport": args.teleport, "fit_objective": objective_description(model.family,
                                                                                            hf_tolerance),
                          **({"learned_objective": f"{objective_description(model.family)}; learned by Adam, "
                                                   f"{args.learn_iterations} steps (samplers.learned)"}
                             if "learned" in schedules else {}),
                          **({"data_stats": data_stats.describe()} if data_stats else {}),
                          "fast_path": "bf16 autocast, channels_last, no compile" if d.device.type == "cuda" else
                          "fp32 eager", **provenance(d.device)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "model_samplers.json", result)
    atomic_write_bytes(out / "model_samplers.md", markdown(result).encode())
    plot(result, out / "model_samplers.png")
    print(f"wrote {out / 'model_samplers.json'}, .md, .png")
    return result
