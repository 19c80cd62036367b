"""Build, save and load a model from its JSON description (process config, network config, data shape; a DSNO
``OneStepGenerator`` adds its output times as ``generator``): one safetensors file, no pickle. ``load_model`` also
imports other people's models (docs/models.md): NVlabs/edm and FDM snapshot pickles (``edm_snapshot``) and diffusers
UNet2DModel pipelines (``diffusers_unet``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from ..checkpoint import META_KEY, atomic_write_bytes, list_checkpoints, read_weights, state_dict_cpu, verify_checkpoint
from ..errors import UserError
from ..fastpath import SamplingNet
from ..nets import ARCHS, build_net
from ..processes import process_from_config
from .diffusers_unet import diffusers_weights, is_diffusers_weights, load_diffusers
from .edm_snapshot import load_snapshot
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
    """Weights of ``model.net`` in safetensors with the JSON description as metadata: one self-contained file, written
    atomically. A model on the sampling fast path (``accelerate``) saves its plain network, so the file loads like any
    other. A network this library cannot rebuild (a diffusers UNet, a wrapped callable) is refused."""
    arch = model.net_config.get("arch")
    if arch not in ARCHS:
        raise UserError(f"this model's network ({arch!r}) has no equivalent here, so it cannot be saved as a "
                        f"fastdiffusion file; load it from its source instead")
    net = model.net.net if isinstance(model.net, SamplingNet) else model.net
    data = safetensors_bytes(state_dict_cpu(net), metadata={META_KEY: json.dumps(model_meta(model))})
    atomic_write_bytes(Path(path), data)


def is_model_path(path: str | Path) -> bool:
    """Whether ``path`` names a model ``load_model`` reads (rather than a sample set or an image folder)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() in (".safetensors", ".pkl") or is_diffusers_weights(p)
    return p.is_dir() and (diffusers_weights(p) is not None or bool(list_checkpoints(p))
                           or (p / "ema.safetensors").is_file() or (p / "model.safetensors").is_file())


def resolve_model_file(path: str | Path, ema: bool = True) -> Path:
    """A run directory -> its newest checkpoint; a checkpoint directory -> its ema/model file; a diffusers pipeline or
    its unet/ folder -> the UNet's weights file; a file (ours, an EDM/FDM ``.pkl``) -> itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model, checkpoint or run directory")
    if path.is_dir() and (weights := diffusers_weights(path)) is not None:
        return weights
    if path.is_dir():
        ckpts = list_checkpoints(path)
        ckpt = ckpts[0] if ckpts else path
        path = ckpt / ("ema.safetensors" if ema else "model.safetensors")
        if not path.is_file():
            raise UserError(f"{ckpt}: holds no checkpoint ({path.name} missing); train first or name a model file")
    return path


def load_model(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> ProcessModel:
    """Load a model from a ``.safetensors`` file, a checkpoint directory or a run directory (newest checkpoint), or
    import one: an NVlabs/edm or FDM snapshot ``.pkl`` (through the restricted unpickler: no code from it runs), a
    diffusers pipeline folder or its ``unet/`` folder (needs diffusers). Every one is a ``ProcessModel``:
    ``model(x, sigma, class_labels=None)`` with one-hot ``class_labels``.
    """
    file = resolve_model_file(path, ema)
    if file.suffix == ".pkl":
        if not ema:
            raise UserError(f"{file}: an EDM/FDM snapshot holds only its EMA network; drop --raw")
        return load_snapshot(file).to(device)
    if is_diffusers_weights(file):
        return load_diffusers(file).to(device)
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
