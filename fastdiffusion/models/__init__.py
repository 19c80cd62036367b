"""Models: model types (``ProcessModel``, DSNO's ``OneStepGenerator``) and building, saving and loading them."""

from .files import build_model, load_model, model_meta, resolve_model_file, save_model
from .model import OneStepGenerator, ProcessModel

__all__ = ["OneStepGenerator", "ProcessModel", "build_model", "load_model", "model_meta", "resolve_model_file",
           "save_model"]
