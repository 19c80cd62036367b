"""Models: model types (``ProcessModel``, DSNO's ``OneStepGenerator``), building, saving and loading them, and
importing other people's (EDM/FDM snapshots, diffusers pipelines, ``wrap_eps`` / ``wrap_v`` for any callable)."""

from .files import build_model, is_model_path, load_model, model_meta, resolve_model_file, save_model
from .model import OneStepGenerator, ProcessModel
from .wrap import wrap_eps, wrap_v

__all__ = ["OneStepGenerator", "ProcessModel", "build_model", "is_model_path", "load_model", "model_meta",
           "resolve_model_file", "save_model", "wrap_eps", "wrap_v"]
