"""``fastdiffusion distill ...``: ``trajectories`` (teacher PF-ODE states for DSNO) and ``train`` (the student).

``fastdiffusion.cli`` calls ``add_parser(subparsers)``; each subcommand sets ``func(args)``.
"""

from __future__ import annotations

import argparse
import os

from ..cli_args import (
    add_config_arguments,
    add_sampling_arguments,
    check_device,
    config_overrides,
    fast_path_options,
    parse_kv,
    positive_int,
)


def _trajectories(args: argparse.Namespace) -> None:
    from ..guidance import parse_class, parse_interval
    from ..seeds import parse_seeds
    from ..training import distributed
    from .trajectories import generate_trajectories

    hyper = parse_kv(args.opt, "--opt")
    class_labels = parse_class(args.class_label)
    d = distributed.setup(check_device(args.device))
    try:
        generate_trajectories(args.model, args.out, parse_seeds(args.seeds), sampler=args.sampler, nfe=args.nfe,
                              times=args.times, grid=args.grid, schedule=args.schedule, shard_size=args.shard_size,
                              dtype=args.dtype, batch=args.batch, device=d.device, ema=not args.raw,
                              fast=fast_path_options(args), progress=not args.quiet, class_labels=class_labels,
                              guidance=args.guidance, guidance_interval=parse_interval(args.guidance_interval),
                              **hyper)
    finally:
        distributed.teardown()


def _train(args: argparse.Namespace) -> None:
    from .student import DistillConfig, distill

    overrides = config_overrides(args, DistillConfig)
    path = distill(DistillConfig(**overrides), resume=args.resume, quiet=args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"student: {path}")
        print(f"sample:  fastdiffusion sample {path} --sampler dsno --nfe 1")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``distill`` with its subcommands to the top-level ``subparsers``; returns the ``distill`` parser."""
    from ..samplers import deterministic_edm_samplers
    from .student import DistillConfig
    from .trajectories import DTYPES, GRIDS

    p = subparsers.add_parser("distill", help="DSNO: teacher trajectories and a one-call student")
    sub = p.add_subparsers(dest="distill", required=True)

    t = sub.add_parser("trajectories", help="store a teacher's PF-ODE states at M output times, sharded",
                       description="For each seed store the noise and the teacher's sampler states at M output times "
                       "(m = 0 the final sample) in safetensors shards of --shard-size seeds with a manifest.json. "
                       "Resumable (run it again: complete shards are skipped); under torchrun rank r writes shards "
                       "r, r + world, ...")
    t.add_argument("model", help="teacher: a run directory, checkpoint directory or .safetensors model file")
    deterministic = deterministic_edm_samplers()
    t.add_argument("--sampler", default="heun", choices=deterministic)
    t.add_argument("--nfe", type=positive_int, default=35, help="teacher denoiser calls per trajectory (default 35; "
                   "with --guidance W != 1 each is 2 network evaluations)")
    t.add_argument("--times", type=positive_int, default=4, help="M, output times per trajectory (default 4)")
    t.add_argument("--grid", default="quadratic", choices=list(GRIDS),
                   help="output times tau_m = (m/M)^p in the sampler's normalised step time (default quadratic)")
    t.add_argument("--shard-size", type=positive_int, default=1000, help="seeds per shard file (default 1000)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--dtype", default="fp16", choices=list(DTYPES), help="storage type of the states (default fp16)")
    add_sampling_arguments(t, seeds="0-9999", batch=256)
    t.set_defaults(func=_trajectories)

    s = sub.add_parser("train", help="train a DSNO student on stored trajectories",
                       description="Distil the teacher's trajectories into a one-call student (weighted trajectory "
                       "loss, EMA, bf16 on CUDA, torchrun DDP, --resume). Writes RUN_DIR/student.safetensors. At "
                       "each checkpoint logs spread_ratio, the per-pixel spread of the EMA student's samples of 64 "
                       "fixed noises over the teacher's, and warns below 0.1 (the student makes nearly one image).")
    s.add_argument("traj_dir", help="a directory written by `distill trajectories`")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(s, DistillConfig, skip=("traj_dir",))
    s.set_defaults(func=_train)
    return p
