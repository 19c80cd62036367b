"""Argument parsers shared by every subcommand's CLI module."""

from __future__ import annotations

import argparse
import json

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
