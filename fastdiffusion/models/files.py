"""Build, save and load a model from its JSON description (process config, network config, data shape; a DSNO
``OneStepGenerator`` adds its output times as ``generator``): one safetensors file, no pickle."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import list_checkpoints, read_weights, save_weights, state_dict_cpu, verify_checkpoint
from ..errors import UserError
from ..fastpath import SamplingNet
from ..nets import build_net
from ..processes import process_from_config
from .model import OneStepGenerator, ProcessModel


def model_meta(model: ProcessModel) -> dict:
    meta = {"process": model.process.config(), "net": model.net_config, "data_shape": list(model.data_shape)}
    if isinstance(model, OneStepGenerator):
        meta["generator"] = model.generator_config
    return meta


def build_model(meta: dict) -> ProcessModel:
    """A freshly initialised model (a ``OneStepGenerator`` where ``meta`` has ``generator``) from ``model_meta``-style
    JSON."""
    try:
        process = process_from_config(meta["process"])
        net = build_net(**meta["net"])
        if "generator" in meta:
            return OneStepGenerator(net, process, meta["net"], tuple(meta["data_shape"]), **meta["generator"])
        return ProcessModel(net, process, meta["net"], tuple(meta["data_shape"]))
    except KeyError as e:
        raise UserError(f"model description lacks {e}: not a fastdiffusion model file") from None


def save_model(model: ProcessModel, path: str | Path) -> None:
    """Weights of ``model.net`` in safetensors with the JSON description as metadata: one self-contained file. A model
    on the sampling fast path (``accelerate``) saves its plain network, so the file loads like any other."""
    net = model.net.net if isinstance(model.net, SamplingNet) else model.net
    save_weights(Path(path), state_dict_cpu(net), model_meta(model))


def resolve_model_file(path: str | Path, ema: bool = True) -> Path:
    """A run directory -> its newest checkpoint; a checkpoint directory -> its ema/model file; a file -> itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model, checkpoint or run directory")
    if path.is_dir():
        ckpts = list_checkpoints(path)
        ckpt = ckpts[0] if ckpts else path
        path = ckpt / ("ema.safetensors" if ema else "model.safetensors")
        if not path.is_file():
            raise UserError(f"{ckpt}: holds no checkpoint ({path.name} missing); train first or name a model file")
    return path


def load_model(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> ProcessModel:
    """Load a model from a ``.safetensors`` file, a checkpoint directory or a run directory (newest checkpoint).

    No pickle is involved: the file holds tensors and JSON only.
    """
    file = resolve_model_file(path, ema)
    if (file.parent / "state.json").is_file():  # inside a checkpoint: check its recorded sha256 first
        verify_checkpoint(file.parent, only=file.name)
    tensors, meta = read_weights(file)
    model = build_model(meta)
    try:
        model.net.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{file}: weights do not match the network it describes ({first})") from None
    return model.to(device).eval()
