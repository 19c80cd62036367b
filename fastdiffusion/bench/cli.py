"""``fastdiffusion bench ...``: the benchmark harnesses as subcommands (``samplers``, ``psld-samplers``,
``throughput``); ``fastdiffusion.cli`` calls ``add_parser(subparsers)`` and each subcommand sets ``func(args)``."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """argparse type: a comma list of integers."""
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` with its subcommands to the top-level ``subparsers``; returns the ``bench`` parser."""
    from . import psld_samplers, samplers, throughput

    p = subparsers.add_parser("bench", help="benchmarks: samplers on exact scores, training/sampling throughput")
    sub = p.add_subparsers(dest="bench", required=True)
    for name, module, help in (
            ("samplers", samplers, "EDM-family samplers vs the exact PF-ODE of Gaussian mixtures"),
            ("psld-samplers", psld_samplers, "PSLD samplers (EM, SSCS, splitting, conjugate) on exact-score mixtures"),
            ("throughput", throughput, "training s/kimg, MFU, peak memory and sampling throughput of a network")):
        s = sub.add_parser(name, help=help, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(s)
        s.set_defaults(func=module.main)
    return p
