"""A run's log: ``log.jsonl`` rows (one JSON object per line), mirrored to TensorBoard with ``--logger tensorboard``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

LOGGERS = ("jsonl", "tensorboard")


def check_logger(name: str) -> None:
    """A known logger whose package is installed, else a one-line UserError."""
    if name not in LOGGERS:
        raise UserError(f"--logger must be one of {', '.join(LOGGERS)}, got '{name}'")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: "
                            "pip install 'fastdiffusion[tensorboard]' (or drop --logger)") from None


class RunLog:
    """Appends rows to ``run_dir/log.jsonl``; with ``logger='tensorboard'`` also writes each number of a row as a
    scalar and each sample grid as an image to ``run_dir/tensorboard``, dropping events at or past ``start_step``
    that an interrupted earlier session wrote (the resumed run writes them again)."""

    def __init__(self, run_dir: Path, logger: str, start_step: int) -> None:
        self.path = Path(run_dir) / "log.jsonl"
        self.path.touch()  # a checkpoint before the first log row plots an empty log
        self.tb = None
        if logger == "tensorboard":
            check_logger(logger)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step or None)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """A PNG written for ``step`` (a sample grid), into TensorBoard."""
        if self.tb is not None:
            with Image.open(png) as img:
                self.tb.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
