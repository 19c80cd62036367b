"""Training: config, loop, EMA, torchrun integration."""

from .config import PRESETS, TrainConfig, preset
from .loop import Trainer, train

__all__ = ["PRESETS", "TrainConfig", "Trainer", "preset", "train"]
