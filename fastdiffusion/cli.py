"""The ``fastdiffusion`` command: train | sample | eval | distill | bench | info.

Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import (
    add_config_arguments,
    add_sampling_arguments,
    config_overrides,
    dispatch,
    parse_kv,
    positive_int,
)
from .errors import UserError


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .training.config import TrainConfig

    start = p.add_mutually_exclusive_group()
    start.add_argument("--preset", help="start from a named configuration (see `fastdiffusion info`)")
    start.add_argument("--config", type=Path, help="start from a JSON config file (e.g. a run's config.json)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(p, TrainConfig)


def cmd_train(args: argparse.Namespace) -> None:
    from .training.config import TrainConfig, preset
    from .training.loop import train

    if args.config:
        try:
            cfg = TrainConfig.from_json(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise UserError(f"--config {args.config}: not a readable training config ({e})") from None
    else:
        cfg = preset(args.preset) if args.preset else TrainConfig()
    overrides = config_overrides(args, TrainConfig, cfg)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    ckpt = train(cfg, resume=args.resume, quiet=args.quiet)
    run = Path(cfg.run_dir)
    print(f"checkpoint: {ckpt}")
    print(f"samples:    {run / 'samples.png'}")
    print(f"loss curve: {run / 'loss.png'}")
    print(f"log:        {run / 'log.jsonl'}")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .cli_args import fast_path_options
    from .fastpath import accelerate
    from .models import load_model
    from .outputs import output_kind, write_samples
    from .sampling import check_sampler_args, generate, resolve_sampler
    from .seeds import parse_seeds
    from .training import distributed

    seeds = parse_seeds(args.seeds)
    hyper = parse_kv(args.opt, "--opt")
    output_kind(args.out)
    d = distributed.setup(args.device)
    model = load_model(args.model, ema=not args.raw, device=d.device)
    args.sampler, args.nfe = resolve_sampler(model, args.sampler, args.nfe)
    check_sampler_args(args.sampler, args.nfe, hyper)
    accelerate(model, d.device, **fast_path_options(args))
    with torch.no_grad():
        x = generate(model, seeds, batch=args.batch, device=d.device, sampler=args.sampler, nfe=args.nfe,
                     schedule=args.schedule, progress=not args.quiet, **hyper)
    if d.is_main:
        out = write_samples(x, args.out, seeds)
        print(f"wrote {len(seeds)} samples ({args.sampler}, {args.nfe} NFE) to {out}")
    distributed.teardown()


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    if args.net:
        from .nets.profile import info_net

        info_net(args)
        return

    from . import __version__
    from .nets import PRESETS as NET_PRESETS
    from .processes import PROCESS_NAMES
    from .samplers import SAMPLERS, SCHEDULES
    from .training.config import PRESETS

    print(f"fastdiffusion {__version__}, torch {torch.__version__}, "
          f"cuda {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    print("processes: " + ", ".join(PROCESS_NAMES))
    print("samplers:")
    for name, spec in sorted(SAMPLERS.items()):
        hyper = ", ".join(f"{k}={v}" for k, v in spec.hyper.items())
        print(f"  {name:<12} {spec.help}" + (f" [{hyper}]" if hyper else ""))
    print("schedules: " + ", ".join(SCHEDULES))
    print("networks: " + ", ".join(NET_PRESETS))
    print("training presets: " + ", ".join(PRESETS))


def build_parser() -> argparse.ArgumentParser:
    from .nets.profile import add_info_arguments
    from .samplers import SAMPLERS

    parser = argparse.ArgumentParser(prog="fastdiffusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model", description="Train a diffusion model. Every config field "
                       "has a flag; --preset or --config sets the starting point.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate samples from a trained model",
                       description="Generate samples. Image i depends only on seed i (any batch size, any GPU count).")
    p.add_argument("model", help="a run directory (newest checkpoint), a checkpoint directory or a .safetensors file")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: heun for EDM-family models, sscs for PSLD, "
                   "dsno for DSNO students (see `fastdiffusion info`)")
    p.add_argument("--nfe", type=positive_int, help="network calls per sample (default: 35 heun, 100 sscs, 1 dsno)")
    p.add_argument("--out", default="samples.png", help=".png grid, .npz array, or a folder (one PNG per seed)")
    add_sampling_arguments(p, seeds="0-63", batch=256)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="versions, device, processes, samplers, networks, presets; --net profiles one",
                       description="Without --net: what is installed and available. With --net NAME: parameters, "
                       "counted FLOPs per call, activation memory and latency at batch 1 and 256 on --device.")
    add_info_arguments(p)
    p.set_defaults(func=cmd_info)

    from .bench.cli import add_parser as add_bench
    from .distill.cli import add_parser as add_distill
    from .metrics.cli import add_parser as add_eval

    add_eval(sub)
    add_distill(sub)
    add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
