"""``fastdiffusion bench ...``: the benchmark harnesses as subcommands (``samplers``, ``throughput``).

``fastdiffusion.cli`` calls ``add_parser(subparsers)``; each subcommand sets ``func(args)``.
"""

from __future__ import annotations

import argparse


def _samplers(args: argparse.Namespace) -> None:
    from . import samplers

    samplers.main(args)


def _throughput(args: argparse.Namespace) -> None:
    from . import throughput

    throughput.main(args)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` with its subcommands to the top-level ``subparsers``; returns the ``bench`` parser."""
    from . import samplers, throughput

    p = subparsers.add_parser("bench", help="benchmarks: samplers on exact scores, training/sampling throughput")
    sub = p.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("samplers", help="EDM-family samplers vs the exact PF-ODE of Gaussian mixtures",
                       description=samplers.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    samplers.add_arguments(s)
    s.set_defaults(func=_samplers)
    t = sub.add_parser("throughput", help="training s/kimg, MFU, peak memory and sampling throughput of a network",
                       description=throughput.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    throughput.add_arguments(t)
    t.set_defaults(func=_throughput)
    return p
