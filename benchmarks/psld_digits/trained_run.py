"""The shared start of the PSLD diagnostics here: ``MODEL --n N --out FILE``, the model, and its run's training images
in [-1, 1] (float64)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import fastdiffusion as fd
from fastdiffusion.data import load_dataset
from fastdiffusion.metrics.sources import run_training
from fastdiffusion.models import ProcessModel


def load_trained_run(description: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
                     ) -> tuple[argparse.Namespace, ProcessModel, str, Tensor]:
    """Parse the command line (with the script's own ``add_arguments``), load MODEL (on the GPU where there is one)
    and its run's training split: (args, model, data name, images)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a PSLD run directory (its config.json names the training data)")
    p.add_argument("--n", type=int, default=256, help="training images / prior draws")
    p.add_argument("--out", type=Path, required=True)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args()
    training = run_training(Path(args.model))
    if training is None:
        raise SystemExit(f"{args.model}: not a run directory with a config.json naming its training data")
    images = load_dataset(training["data"], split="train").x.double()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return args, fd.load_model(args.model, device=device), training["data"], images
