"""What every subcommand's CLI module shares: argument parsers, and ``dispatch`` (errors to exit codes)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from .errors import UserError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_kv(items: list[str] | None, flag: str) -> dict:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; values are read as JSON when they parse, else kept as strings."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _scalar_type(tp: object) -> type:
    """The parser of a field annotated ``int``, ``float | None`` etc."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp  # type: ignore[return-value]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (defaults None = keep the config's value): ``--no-x`` for booleans,
    two floats for pairs, repeatable ``--process-opt KEY=VALUE`` for ``*_options`` dicts. Each flag's help is its
    field's ``help`` metadata and the field's default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, tp = "--" + f.name.replace("_", "-"), hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = f.metadata.get("help", "")
        if default is not None and not f.name.endswith("_options"):  # a None default says its meaning in the text
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            text = f"{text} (default: {shown})"
        if f.name.endswith("_options"):
            parser.add_argument(flag.removesuffix("ions"), dest=f.name, action="append", metavar="KEY=VALUE",
                                help=text)
        elif _scalar_type(tp) is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(tp) is tuple:
            parser.add_argument(flag, dest=f.name, type=float, nargs=2, default=None, metavar=("A", "B"), help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=_scalar_type(tp), default=None, help=text)


def config_overrides(args: argparse.Namespace, cls: type) -> dict:
    """The fields the command line set, typed for ``cls``; ``*_options`` flags as the dict of their KEY=VALUE pairs."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name.endswith("_options"):
            value = parse_kv(value, "--" + f.name[:-4])
        elif isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out


def add_sampling_arguments(parser: argparse.ArgumentParser, seeds: str, batch: int) -> None:
    """Flags every sampling command shares: schedule, seeds, batch, sampler options, weights, precision, device."""
    from .samplers import SCHEDULES

    parser.add_argument("--schedule", metavar="NAME|FILE", help=f"noise-level schedule: {', '.join(SCHEDULES)}, or a "
                        "schedule file from `fastdiffusion tune` (default: the sampler's)")
    parser.add_argument("--seeds", default=seeds, help=f"e.g. 0-63 or 1,5,9 (default {seeds})")
    parser.add_argument("--batch", type=positive_int, default=batch, help=f"seeds per sampler batch (default {batch})")
    parser.add_argument("--opt", action="append", metavar="KEY=VALUE", help="sampler option, e.g. churn=10")
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true")
    add_guidance_arguments(parser)
    add_fast_path_arguments(parser)


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """``--class K|random`` and ``--guidance W`` for class-conditional models (``fastdiffusion.guidance``)."""
    parser.add_argument("--class", dest="class_label", metavar="K|random",
                        help="class-conditional model: class K for every seed, or one drawn from each seed (random)")
    parser.add_argument("--guidance", type=float, metavar="W",
                        help="classifier-free guidance D_u + W (D_c - D_u) with --class (default 1, the plain "
                             "conditional model); W != 1 makes each NFE 2 network evaluations, batched in one call")
    parser.add_argument("--guidance-interval", metavar="LO,HI",
                        help="apply the guidance only at noise levels sigma in (LO, HI] (limited-interval guidance, "
                             "Kynkaanniemi et al. 2024); elsewhere the plain conditional model, 1 network evaluation")


def add_gaussian_arguments(parser: argparse.ArgumentParser, afs: bool = True) -> None:
    """``--teleport SIGMA``, ``--afs`` (unless ``afs`` is False) and ``--data-stats DATA|FILE``
    (``processes.gaussian_data``, ``data.stats``; EDM family and PSLD)."""
    parser.add_argument("--teleport", type=float, metavar="SIGMA", help="skip the noise levels (PSLD: times) above "
                        "SIGMA by the exact flow of Gaussian data (0 network calls); the sampler spends its NFE below "
                        "SIGMA")
    if afs:
        parser.add_argument("--afs", action="store_true", help="analytic first step: the sampler's first model call "
                            "is the Gaussian data's (not a network call), so it runs a grid of NFE + 1 calls")
    parser.add_argument("--data-stats", metavar="DATA|FILE", help="data mean and covariance for --teleport/--afs: a "
                        "statistics .safetensors or DATA[@SPLIT] (default: data_stats.safetensors beside the model, "
                        "else the run's training data, computed once and cached there)")


def hf_tolerance_value(text: str) -> float | str | None:
    """argparse type of ``--hf-tolerance``: a fraction, ``auto`` or ``off`` (None)."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, 'auto' or 'off', got {text!r}") from None


def add_hf_tolerance_argument(parser: argparse.ArgumentParser) -> None:
    """``--hf-tolerance FRACTION`` for fitted schedules (``samplers.tuning.fit_schedule``'s ``hf_tolerance``)."""
    from .samplers.tuning import DEFAULT_HF_TOLERANCE

    parser.add_argument("--hf-tolerance", type=hf_tolerance_value, default="auto", metavar="FRACTION",
                        help="fit the grid with its samples' high-frequency energy within FRACTION of the reference's "
                        "(0.1: within 10%%), so that few-step samples are neither blurrier nor grainier; images only "
                        f"(default auto: {DEFAULT_HF_TOLERANCE['edm']:g} for EDM-family images, none for PSLD; off: "
                        "endpoint RMS alone)")


def check_gaussian_flags(args: argparse.Namespace) -> None:
    """A one-line UserError for --data-stats without --teleport or --afs (it would change nothing)."""
    if args.data_stats is not None and args.teleport is None and not args.afs:
        raise UserError("--data-stats is used only by --teleport and --afs: add one or drop --data-stats")


def teleport_phrase(level: float, level_name: str) -> str:
    """'teleport to sigma = 10' (``level_name``: the process's, e.g. PSLD's 't')."""
    return f"teleport to {level_name} = {level:g}"


def describe_gaussian(options: dict, level_name: str) -> str:
    """'analytic first step, teleport to sigma = 10 (data statistics: digits16@train)' for protocols and messages."""
    if not options:
        return ""
    parts = (["analytic first step"] if options.get("afs") else []) + (
        [teleport_phrase(options["teleport"], level_name)] if options.get("teleport") is not None else [])
    source = options["data_stats"].info.get("source", "given") if "data_stats" in options else "given"
    return f"{', '.join(parts)} (data statistics: {source})"


def check_device(name: str) -> str:
    """``--device``: 'auto' or a cpu / cuda[:N] / mps device present on this machine, else a one-line UserError."""
    import torch

    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and torch.cuda.device_count() <= (dev.index or 0):
        found = f"only {torch.cuda.device_count()} CUDA GPU(s)" if torch.cuda.is_available() else "no CUDA GPU"
        raise UserError(f"--device {name}: this machine has {found}; use --device cpu (or auto)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu (or auto)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: unsupported device type; use auto, cpu, cuda or cuda:N")
    return name


def add_fast_path_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling fast-path switches (``fastpath.accelerate``); each defaults to on for a CUDA GPU that supports it,
    off on the CPU."""
    from .fastpath import PRECISIONS

    g = parser.add_argument_group("fast path (default: on for a CUDA GPU that supports it, off on the CPU)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto", help="network precision; the ODE state is fp32 "
                   "(auto: bf16 on GPUs of compute capability 8.0 or later, else fp32)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (with CUDA graphs on a GPU); default: on a GPU of compute "
                   "capability 7.0 or later once a timed eager call shows the job's calls pay for the compile time, "
                   "cached across runs in $TORCHINDUCTOR_CACHE_DIR (default ~/.cache/fastdiffusion/inductor)")
    g.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None)


def fast_path_options(args: argparse.Namespace) -> dict:
    """The ``accelerate`` keyword arguments the fast-path flags set."""
    return {k: getattr(args, k) for k in ("precision", "channels_last", "compile", "cudnn_benchmark")}


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; a UserError ends in one stderr line and exit 2, an OS error in one line and exit 1."""
    try:
        args.func(args)
    except UserError as e:
        print(f"fastdiffusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fastdiffusion {args.command}: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
