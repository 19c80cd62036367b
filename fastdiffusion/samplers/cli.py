"""``fastdiffusion tune MODEL --sampler S --nfe N``: a sampler's noise levels fitted to one model, saved as JSON.

``fastdiffusion.cli`` calls ``add_parser(subparsers)``; the subcommand sets ``func(args)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import (
    add_fast_path_arguments,
    add_gaussian_arguments,
    add_hf_tolerance_argument,
    check_gaussian_flags,
    fast_path_options,
    parse_kv,
    positive_int,
)

TUNING_SEEDS = "1000000-1000255"  # disjoint from the seeds samples and evaluations use by default


def _tune(args: argparse.Namespace) -> None:
    import torch

    from ..bench.provenance import provenance
    from ..errors import UserError
    from ..fastpath import accelerate
    from ..models import load_model
    from ..sampling import check_sampler_args, gaussian_options, model_family
    from ..seeds import SeededNoise, format_seeds, parse_seeds
    from ..training import distributed
    from .learned import learn_schedule
    from .tuning import fit_schedule, model_digest, objective_description, resolve_hf_tolerance, save_schedule

    hyper = parse_kv(args.opt, "--opt")
    check_gaussian_flags(args)
    check_sampler_args(args.sampler, args.nfe, hyper)
    if args.learn and args.teleport is not None:
        raise UserError("tune --learn: learned fits start from sigma_max; drop --teleport")
    seeds = parse_seeds(args.seeds)
    d = distributed.setup(args.device)
    model = load_model(args.model, ema=not args.raw, device=d.device)
    digest = model_digest(model)
    # a learned fit differentiates through the network: no compiled inference graphs
    accelerate(model, d.device, **{**fast_path_options(args), **({"compile": False} if args.learn else {})})
    shortcut = gaussian_options(args.teleport, False, args.data_stats, args.model, model)
    noise = SeededNoise(seeds).randn(model.data_shape, d.device)
    hf_tolerance = resolve_hf_tolerance(args.hf_tolerance, noise.shape, model_family(model))
    with torch.no_grad():
        if args.learn:
            hf_tolerance = None  # the learned fit minimises the distance alone
            tuned = learn_schedule(model, sampler=args.sampler, nfe=args.nfe, noise=noise,
                                   iterations=args.iterations, distance=args.distance, progress=True, **hyper)
        else:
            tuned = fit_schedule(model, sampler=args.sampler, nfe=args.nfe, noise=noise, max_evals=args.max_evals,
                                 teleport=shortcut.get("teleport"), data_stats=shortcut.get("data_stats"),
                                 hf_tolerance=hf_tolerance, distance=args.distance, **hyper)
    objective = objective_description(model_family(model), hf_tolerance, args.distance)
    protocol = {"model": str(args.model), "model_sha256": digest, "ema": not args.raw, "sampler": args.sampler,
                "nfe": args.nfe, "hyper": hyper, "tuning_seeds": format_seeds(seeds),
                "objective": objective + (f"; learned by Adam, {args.iterations} steps" if args.learn else ""),
                "teleport": args.teleport, **({"data_stats": shortcut["data_stats"].describe()} if shortcut else {}),
                "provenance": provenance(d.device)}
    save_schedule(args.out, tuned, protocol)
    fixed = ", ".join(f"{k} {v:.4g}" for k, v in tuned.start_values.items())
    coef = "".join(f", {k} = {v:.4g}" if isinstance(v, float) else f", {len(v)} {k}" for k, v in tuned.hyper.items())
    value = "endpoint RMS" if args.distance == "rms" else "mean endpoint L2"
    value += "" if hf_tolerance is None else " x sharpness factor"
    print(f"{args.sampler} at {args.nfe} NFE{coef}: {value} {tuned.value:.4g} (starts: {fixed}; "
          f"{tuned.evaluations} sampler runs{', learned' if args.learn else ''}) -> {args.out}")
    distributed.teardown()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from .learned import ITERATIONS
    from .registry import deterministic_samplers
    from .tuning import DISTANCES

    p = subparsers.add_parser("tune", help="fit a sampler's noise levels to one model",
                              description="Fit the noise levels (PSLD: times) of a deterministic sampler at a "
                              "given NFE to the model's own PF-ODE (reference: a high-accuracy solve from the tuning "
                              "noise, Heun for the EDM family, CSPS-D for PSLD), with lambda-DDIM's lam unless --opt "
                              "fixes it. The JSON goes to "
                              "`sample/eval/distill trajectories --schedule FILE`.")
    p.add_argument("model", help="a run directory, checkpoint directory or model file")
    p.add_argument("--sampler", required=True, choices=deterministic_samplers("edm") + deterministic_samplers("psld"))
    p.add_argument("--nfe", type=positive_int, required=True, help="network calls per sample the grid is for")
    p.add_argument("--seeds", default=TUNING_SEEDS, help=f"tuning noise seeds (default {TUNING_SEEDS}: 256 seeds, "
                   "disjoint from sampling's defaults)")
    p.add_argument("--max-evals", type=positive_int, default=200, help="sampler runs of the search (default 200)")
    p.add_argument("--learn", action="store_true",
                   help="learn the grid with per-step network levels and correction scales by gradient descent "
                        "through the sampler and the network (DPM-Solver++ samplers; docs/samplers.md, 'Learned "
                        "solver parameters')")
    p.add_argument("--iterations", type=positive_int, default=ITERATIONS,
                   help=f"gradient steps of --learn (default {ITERATIONS})")
    p.add_argument("--distance", choices=DISTANCES, default=DISTANCES[0],
                   help="endpoint distance the fit minimises: pooled RMS (default) or the mean per-sample L2 distance, "
                        "which weighs a few far-off samples less")
    p.add_argument("--out", type=Path, default=Path("schedule.json"), help="where the schedule goes")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="sampler option, e.g. lam=-0.01")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    add_gaussian_arguments(p, afs=False)
    add_hf_tolerance_argument(p)
    add_fast_path_arguments(p)
    p.set_defaults(func=_tune, afs=False)  # tune has no --afs: tune NFE + 1 calls for an --afs run
