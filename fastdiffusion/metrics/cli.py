"""`fastdiffusion eval`: quality metrics of a model or a sample set, each number with its protocol.

    fastdiffusion eval runs/demo --metrics fd-digits,prdc,memorization --n 1000 --out eval.json
    fastdiffusion eval samples.npz --metrics fid --reference cifar10-train.npz --inception weights-inception-....pth
    torchrun --nproc-per-node 8 -m fastdiffusion.metrics.cli runs/cifar --metrics fid --n 50000 ...

`add_parser(subparsers)` adds the sub-command to the main CLI; `python -m fastdiffusion.metrics.cli ARGS` runs it
alone. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import (
    add_fast_path_arguments,
    add_gaussian_arguments,
    add_guidance_arguments,
    check_device,
    check_gaussian_flags,
    dispatch,
    fast_path_options,
    parse_kv,
    positive_int,
    teleport_phrase,
)

__all__ = ["add_parser", "cmd_eval", "main"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `eval` to the main CLI's sub-commands; the parser's default `func` is `cmd_eval`."""
    from ..samplers import SAMPLERS
    from .evaluate import METRICS
    from .sources import DEFAULT_N

    p = subparsers.add_parser(
        "eval", help="quality metrics (FD-digits, PRDC, memorisation, FID, sliced W2, GMM NLL) with protocols",
        description="Evaluate a model (generating samples) or a sample set. Every number is reported with its "
                    "protocol: metric, feature network and hash, sample counts, reference set, sampler, NFE, "
                    "EMA or raw, seeds.")
    p.add_argument("model_or_samples", metavar="MODEL_OR_SAMPLES",
                   help="run directory, checkpoint directory or model .safetensors (samples are generated), or "
                        "an .npz of samples, an image folder or a .zip")
    p.add_argument("--metrics", help=f"comma-separated, from {','.join(METRICS)} "
                                     "(default: fd-digits,kid-digits,prdc,memorization for digits; sliced for points, "
                                     "+ gmm-nll for mixtures)")
    p.add_argument("--n", type=positive_int, help=f"samples to generate (default {DEFAULT_N}) or to read "
                                                   "(default: all in the file)")
    p.add_argument("--reference", help="DATASET@SPLIT, DATASET, SPLIT or a FID statistics .npz (default: the run's "
                                       "training data, else digits; split test for bundled sets, all for paths)")
    p.add_argument("--inception", help="the weights-inception-2015-12-05-6726825d.pth file for fid and kid (or set "
                                       "FASTDIFFUSION_INCEPTION; default: torch-fidelity's copy in "
                                       "~/.cache/torch/hub/checkpoints if there)")
    p.add_argument("--save-ref-stats", type=Path, metavar="NPZ",
                   help="also save the FID reference statistics computed from images to this .npz")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the model family's (heun for EDM-family "
                   "models, sscs for PSLD, dsno for DSNO students)")
    p.add_argument("--nfe", type=positive_int, help="denoiser calls per sample (default: the family's, 35 for heun; "
                                                    "with --guidance W != 1 each is 2 network evaluations)")
    p.add_argument("--schedule", metavar="NAME|FILE", help="noise-level schedule name or a schedule file from "
                                                           "`fastdiffusion tune` (default: the sampler's)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="sampler option, e.g. churn=10")
    p.add_argument("--seeds", help="e.g. 0-999 (default: 0..n-1)")
    p.add_argument("--raw", action="store_true", help="evaluate the raw weights instead of the EMA")
    p.add_argument("--batch", type=positive_int, default=256, help="generation / feature batch (default 256)")
    p.add_argument("--out", type=Path, help="write the full report (JSON) here")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_guidance_arguments(p)
    add_gaussian_arguments(p)
    add_fast_path_arguments(p)
    p.set_defaults(func=cmd_eval)
    return p


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def summary(report: dict) -> str:
    """One line per metric: its numbers, then the protocol in short."""
    from ..guidance import describe

    lines = []
    for name, res in report["results"].items():
        pr = res["protocol"]
        nums = {k: v for k, v in res.items() if k != "protocol" and not isinstance(v, dict)}
        if "value" in nums:
            text = _fmt(nums.pop("value")) + (f" ± {_fmt(nums.pop('std'))}" if "std" in nums else "")
        else:
            text = " ".join(f"{k}={_fmt(v)}" for k, v in nums.items())
        for space, sub in ((k, v) for k, v in res.items() if k != "protocol" and isinstance(v, dict)):
            text += (f" {space}: fraction_closer={_fmt(sub['fraction_closer'])}"
                     f" median={_fmt(sub['median_generated_to_train'])}"
                     f" (held-out {_fmt(sub['median_heldout_to_train'])})")
        how = f"{pr['sampler']} {pr['nfe']} NFE, {pr['weights']}, " if pr.get("sampler") else ""
        how += f"{describe(pr)}, " if "guidance" in pr else ""
        how += "analytic first step, " if pr.get("afs") else ""
        how += f"{teleport_phrase(pr['teleport'], pr['level_name'])}, " if pr.get("teleport") is not None else ""
        how += f"n={pr['n_generated']} vs {pr.get('reference')}"
        lines.append(f"{name:<13} {text}   [{how}]")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> None:
    from ..checkpoint import atomic_write_json
    from ..guidance import parse_class, parse_interval
    from ..training import distributed
    from .evaluate import evaluate

    class_labels = parse_class(args.class_label)
    check_gaussian_flags(args)
    d = distributed.setup(check_device(args.device))
    try:
        report = evaluate(args.model_or_samples, metrics=args.metrics, n=args.n, reference=args.reference,
                          sampler=args.sampler, nfe=args.nfe, seeds=args.seeds, ema=not args.raw, batch=args.batch,
                          device=str(d.device), inception=args.inception, sampler_options=parse_kv(args.opt, "--opt"),
                          save_reference_stats=args.save_ref_stats, progress=not args.quiet,
                          fast=fast_path_options(args), class_labels=class_labels, guidance=args.guidance,
                          guidance_interval=parse_interval(args.guidance_interval),
                          schedule=args.schedule, teleport=args.teleport, afs=args.afs,
                          data_stats=args.data_stats)
        report["command"] = " ".join(["fastdiffusion", *args.argv])
        if d.is_main:
            for warning in report["warnings"]:
                print(f"fastdiffusion eval: warning: {warning}", file=sys.stderr)
            print(summary(report))
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(args.out, report)
                print(f"report: {args.out}")
    finally:
        distributed.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdiffusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "eval":
        argv = ["eval", *argv]  # `python -m fastdiffusion.metrics.cli ARGS` means `fastdiffusion eval ARGS`
    args = parser.parse_args(argv)
    args.argv = argv
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
