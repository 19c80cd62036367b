"""The ``fastdiffusion`` command: train | dataset | sample | eval | tune | distill | convert | bench | info.

Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import (
    add_config_arguments,
    add_gaussian_arguments,
    add_sampling_arguments,
    config_overrides,
    dispatch,
    parse_kv,
    positive_int,
)
from .errors import UserError


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .training.config import PRESETS, TrainConfig

    start = p.add_mutually_exclusive_group()
    start.add_argument("--preset", help="start from a named setup: " + "; ".join(
        f"{name}: {pre.about}" for name, pre in PRESETS.items()))
    start.add_argument("--config", type=Path, help="start from a JSON config file (e.g. a run's config.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir (default: the preset's) from "
                   "its newest complete checkpoint with its saved config; flags given change only what they name")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or start-up line")
    add_config_arguments(p, TrainConfig)


def cmd_train(args: argparse.Namespace) -> None:
    from .training.config import TrainConfig, resolve_config

    cfg = resolve_config(preset_name=args.preset, config_path=args.config, resume=args.resume,
                         overrides=config_overrides(args, TrainConfig))
    if args.dry_run:
        cfg.validate()
        print(json.dumps(cfg.to_json(), indent=2, sort_keys=True))
        return
    from .training.loop import train

    ckpt = train(cfg, resume=args.resume, quiet=args.quiet)
    run = Path(cfg.run_dir)
    print(f"checkpoint: {ckpt}")
    print(f"samples:    {run / 'samples.png'} (one per checkpoint: samples-NNNNNNNN.png)")
    print(f"loss curve: {run / 'loss.png'}")
    print(f"log:        {run / 'log.jsonl'}")


def cmd_dataset(args: argparse.Namespace) -> None:
    from .data.dataset_zip import write_dataset_zip

    out = write_dataset_zip(args.src, args.dest, resolution=args.resolution, transform=args.transform,
                            max_images=args.max_images, skip_bad=args.skip_bad, progress=not args.quiet)
    classes = f", {out.num_classes} classes" if out.num_classes else ", no labels"
    skipped = f"; skipped {out.skipped} undecodable file(s)" if out.skipped else ""
    print(f"wrote {out.images} images ({'x'.join(map(str, out.shape))}{classes}) to {out.path}{skipped}")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .cli_args import check_device, check_gaussian_flags, describe_gaussian, fast_path_options
    from .fastpath import accelerate, sampling_calls
    from .guidance import describe, parse_class, parse_interval
    from .models import load_model
    from .outputs import output_kind, write_samples
    from .samplers.tuning import schedule_options
    from .sampling import (
        check_sampler_args,
        gaussian_options,
        generate,
        model_process,
        resolve_sampler,
        sampled_guidance,
    )
    from .seeds import parse_seeds
    from .training import distributed

    seeds = parse_seeds(args.seeds)
    hyper = parse_kv(args.opt, "--opt")
    check_gaussian_flags(args)
    class_labels = parse_class(args.class_label)
    interval = parse_interval(args.guidance_interval)
    output_kind(args.out)
    d = distributed.setup(check_device(args.device))
    model = load_model(args.model, ema=not args.raw, device=d.device)
    args.sampler, args.nfe = resolve_sampler(model, args.sampler, args.nfe)
    check_sampler_args(args.sampler, args.nfe, hyper, args.afs)
    gaussian = gaussian_options(args.teleport, args.afs, args.data_stats, args.model, model)
    # before accelerate, which wraps the weights the schedule's digest reads
    schedule = schedule_options(args.schedule, args.sampler, args.nfe + args.afs, model, hyper, args.teleport)
    accelerate(model, d.device, **fast_path_options(args),
               calls=sampling_calls(len(seeds), args.batch, args.nfe, d.world_size))  # compile if it pays
    with torch.no_grad():
        x = generate(model, seeds, batch=args.batch, device=d.device, sampler=args.sampler, nfe=args.nfe,
                     progress=not args.quiet, class_labels=class_labels, guidance=args.guidance,
                     guidance_interval=interval, **schedule, **gaussian, **hyper)
    if d.is_main:
        out = write_samples(x, args.out, seeds)
        guidance = sampled_guidance(model, class_labels, args.guidance, interval, sampler=args.sampler, nfe=args.nfe,
                                    teleport=gaussian.get("teleport"), afs=args.afs, **schedule, **hyper)
        level_name = model_process(model).level_name
        notes = "".join(f"; {t}" for t in (describe_gaussian(gaussian, level_name), describe(guidance)) if t)
        print(f"wrote {len(seeds)} samples ({args.sampler}, {args.nfe} NFE{notes}) to {out}")
    distributed.teardown()


def cmd_convert(args: argparse.Namespace) -> None:
    from .models import load_model, save_model

    if args.dest.suffix != ".safetensors":
        raise UserError(f"{args.dest}: the converted model is a .safetensors file; name it DEST.safetensors")
    model = load_model(args.src)
    save_model(model, args.dest)
    params = sum(p.numel() for p in model.net.parameters())
    print(f"wrote {args.dest}: {model.net_config['arch']} network ({params / 1e6:.2f}M parameters), process "
          f"{model.process.name}, data {'x'.join(map(str, model.data_shape))}")


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

    from .data.dataset_zip import TRANSFORMS

    p = sub.add_parser("dataset", help="write images as an EDM-format zip (PNGs + dataset.json labels) for training",
                       description="Write SRC -- a folder of images (class = top-level subfolder), a zip (EDM's "
                       "included), an .npz/.npy array (with its 'labels') or a bundled set (digits, digits16, "
                       "digits32) -- as DEST.zip: PNGs and dataset.json with the labels, as EDM's dataset_tool "
                       "writes it.")
    p.add_argument("src", help="folder, .zip, .npz/.npy (FILE.npz:KEY picks an array) or bundled image set")
    p.add_argument("dest", help="the .zip to write (must not exist)")
    p.add_argument("--resolution", type=positive_int, help="make every image R x R (default: keep sizes, which must "
                   "then all agree)")
    p.add_argument("--transform", metavar="|".join(TRANSFORMS), help="how --resolution reaches R x R: center-crop "
                   "(crop the centre square, then resize; default) or resize (the whole image, aspect not kept)")
    p.add_argument("--max-images", type=positive_int, help="stop after this many images")
    p.add_argument("--skip-bad", action="store_true", help="leave out undecodable files (counted) instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("sample", help="generate samples from a trained model",
                       description="Generate samples. Image i depends only on seed i (any batch size, any GPU count).")
    p.add_argument("model", help="a run directory (newest checkpoint), a checkpoint directory, a .safetensors file, "
                   "an EDM/FDM snapshot .pkl or a diffusers pipeline folder")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: heun for EDM-family models, sscs for PSLD, "
                   "dsno for DSNO students (see `fastdiffusion info`)")
    p.add_argument("--nfe", type=positive_int, help="denoiser calls per sample (default: 35 heun, 100 sscs, 1 dsno); "
                   "with --guidance W != 1 each call is 2 network evaluations")
    p.add_argument("--out", default="samples.png", help=".png grid, .npz array, or a folder (one PNG per seed)")
    add_sampling_arguments(p, seeds="0-63", batch=256)
    add_gaussian_arguments(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="versions, device, processes, samplers, networks, presets; --net profiles one",
                       description="Without --net: what is installed and available. With --net NAME: parameters, "
                       "counted FLOPs per call, activation memory and latency at batch 1 and 256 on --device.")
    add_info_arguments(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="write another library's model as a fastdiffusion .safetensors file",
                       description="Read SRC -- an NVlabs/edm or FDM snapshot .pkl (no code from it runs), or any "
                       "model file or run directory of this library -- and write DEST.safetensors, which loads "
                       "without the source library and gives the same outputs. diffusers pipelines are used in "
                       "place (load_model reads them) and cannot be converted: their networks have no equivalent "
                       "here.")
    p.add_argument("src", help="an EDM/FDM network-snapshot .pkl, a model file, checkpoint or run directory")
    p.add_argument("dest", type=Path, help="the .safetensors file to write")
    p.set_defaults(func=cmd_convert)

    from .bench.cli import add_parser as add_bench
    from .distill.cli import add_parser as add_distill
    from .metrics.cli import add_parser as add_eval
    from .samplers.cli import add_parser as add_tune

    add_eval(sub)
    add_tune(sub)
    add_distill(sub)
    add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # reports record the command as given, also when called as cli.main([...])
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
