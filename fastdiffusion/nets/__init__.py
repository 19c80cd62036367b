"""Denoiser networks and their registry.

An *architecture* is a network class plus the defaults that name it ('ddpmpp', 'ncsnpp', 'adm', 'mlp', and 'dsno',
DSNO's time-mixing student around a teacher's config given as ``backbone=``); a *preset* is an
architecture plus a paper's or a size's settings ('ddpmpp-cifar10', 'ddpmpp-tiny', ...). ``net_config`` resolves
either to the complete JSON-serialisable kwargs, and ``build_net(**net_config(...))`` rebuilds the same network, so a
checkpoint needs only that dict and its weights.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from torch import nn

from fastdiffusion.errors import UserError
from fastdiffusion.nets.adm import DhariwalUNet
from fastdiffusion.nets.cunet import ContinuousUNet
from fastdiffusion.nets.mlp import MLP
from fastdiffusion.nets.operator import DSNOOperator
from fastdiffusion.nets.unet import SongUNet

__all__ = ["ARCHS", "PRESETS", "MLP", "ContinuousUNet", "DSNOOperator", "DhariwalUNet", "SongUNet", "build_net",
           "net_config"]

# Architecture name -> (class, the defaults that distinguish it). DDPM++ and NCSN++ differ only in these
# (EDM, train.py): the noise embedding, the input path and the resampling filter.
ARCHS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "ddpmpp": (SongUNet, dict(embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                              decoder_type="standard", resample_filter=[1, 1])),
    "ncsnpp": (SongUNet, dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                              decoder_type="standard", resample_filter=[1, 3, 3, 1])),
    "adm": (DhariwalUNet, {}),
    "cunet": (ContinuousUNet, {}),
    "mlp": (MLP, {}),
    "dsno": (DSNOOperator, {}),
}  # fmt: skip

_CIFAR10 = dict(img_resolution=32, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16])

PRESETS: dict[str, dict[str, Any]] = {
    # EDM's CIFAR-10 networks (55.7M / 56.4M parameters unconditional); EDM trains them with dropout 0.13.
    "ddpmpp-cifar10": dict(arch="ddpmpp", **_CIFAR10, dropout=0.13),
    "ncsnpp-cifar10": dict(arch="ncsnpp", **_CIFAR10, dropout=0.13),
    # A 32px / 16px network for a single GPU: ~7M parameters at 32px.
    "ddpmpp-small": dict(arch="ddpmpp", model_channels=64, channel_mult=[1, 2, 2], num_blocks=2,
                         attn_resolutions=[16], dropout=0.10),
    # CPU-sized (0.75M at 16x16x1): trains on two CPU cores; attention at 8x8 only.
    "ddpmpp-tiny": dict(arch="ddpmpp", model_channels=32, channel_mult=[1, 2], num_blocks=1,
                        attn_resolutions=[8], dropout=0.0),
    # Continuous U-Nets: one weight-tied ODE block per level and one in the middle, each one RK4 step (4 evaluations
    # of its vector field). At 32px: 0.22x the parameters and 0.23x the counted FLOPs of ddpmpp-small.
    "cunet-small": dict(arch="cunet", model_channels=24, channel_mult=[1, 2, 2, 4], augment_channels=8,
                        attn_resolutions=[8, 4], mid_attention=True, solver="rk4", solver_steps=1),
    # The same network trained with two Euler steps per ODE block: half the sequential evaluations, 0.12x the FLOPs of
    # ddpmpp-small, faster than it per call at batch 1 on a GPU with CUDA graphs (docs/results.md, issue 7).
    "cunet-small-euler2": dict(arch="cunet", model_channels=24, channel_mult=[1, 2, 2, 4], augment_channels=8,
                               attn_resolutions=[8, 4], mid_attention=True, solver="euler", solver_steps=2),
    # CPU-sized (~0.1M parameters): two levels, attention in the middle only.
    "cunet-tiny": dict(arch="cunet", model_channels=16, channel_mult=[1, 2], augment_channels=4,
                       attn_resolutions=[], mid_attention=True, solver="rk4", solver_steps=1),
    # 2-D toys and low-dimensional Gaussian mixtures.
    "mlp": dict(arch="mlp", width=256, num_blocks=4),
}  # fmt: skip

_NAMED = ("in_channels", "img_resolution", "out_channels")  # passed as build_net's own arguments


def net_config(
    arch: str,
    *,
    img_resolution: int | None = None,
    in_channels: int,
    out_channels: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The complete constructor kwargs of ``arch`` (a preset or an architecture name), with ``'arch'`` set to the
    architecture name. Precedence: class defaults < architecture defaults < preset < arguments. JSON-serialisable;
    ``build_net(**cfg)`` rebuilds the network. ``img_resolution`` is ignored by the MLP."""
    if arch in PRESETS:
        preset = dict(PRESETS[arch])
        name = preset.pop("arch")
    elif arch in ARCHS:
        name, preset = arch, {}
    else:
        raise UserError(
            f"unknown network arch {arch!r}; choose a preset ({', '.join(PRESETS)}) "
            f"or an architecture ({', '.join(ARCHS)})"
        )
    cls, arch_defaults = ARCHS[name]
    params = inspect.signature(cls).parameters
    options = [p for p in params if p not in _NAMED]
    bad = [key for key in overrides if key not in options]
    if bad:
        raise UserError(f"unknown option {bad[0]!r} for network arch {arch!r}; valid options: {', '.join(options)}")

    cfg: dict[str, Any] = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    cfg.update(arch_defaults)
    cfg.update(preset)
    cfg.update(overrides)
    cfg["in_channels"] = in_channels
    cfg["out_channels"] = in_channels if out_channels is None else out_channels
    if "img_resolution" in params:
        if img_resolution is not None:
            cfg["img_resolution"] = img_resolution
        if cfg.get("img_resolution") is None:
            raise UserError(f"network arch {arch!r} needs img_resolution (the image side length in pixels)")
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    try:
        json.dumps(cfg)
    except TypeError as e:
        raise UserError(f"network arch {arch!r}: option values must be JSON-serialisable ({e})") from e
    return {"arch": name, **{k: cfg[k] for k in params if k in cfg}}


def build_net(
    arch: str,
    *,
    img_resolution: int | None = None,
    in_channels: int,
    out_channels: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the network ``net_config(arch, ...)`` describes; the resolved dict is kept as ``net.net_config``."""
    cfg = net_config(arch, img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels,
                     **overrides)  # fmt: skip
    kwargs = dict(cfg)
    cls = ARCHS[kwargs.pop("arch")][0]
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError) as e:  # a wrongly typed option, e.g. channel_mult=2
        raise UserError(f"bad option value for network arch {arch!r}: {e}") from e
    net.net_config = cfg
    return net
