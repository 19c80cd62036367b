"""NVlabs/edm and sail-sg/FDM network snapshots (``network-snapshot-*.pkl``) as models of this library.

A snapshot is read by the restricted unpickler (``safe_pickle``: nothing from the file runs); its ``ema`` record names a
preconditioning class and, inside it, a network class, each with its constructor kwargs and tensors. The
preconditioning becomes a process here (``PRECONDS``), the network a ``SongUNet`` or ``DhariwalUNet`` with the
snapshot's kwargs (``NETWORKS``), and the tensors are renamed key by key (``edm_unet_key``) -- the result is an
ordinary ``ProcessModel``: ``model(x, sigma, class_labels)`` equals the snapshot's ``net(x, sigma, class_labels)``.
The mapping and its checks are in docs/models.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from ..errors import UserError
from ..nets import build_net, net_config
from ..processes import FDM_WARMUP, DiscreteVP, Process, make_process
from .model import ProcessModel
from .safe_pickle import ClassRecord, load_pickle

__all__ = ["NETWORKS", "PRECONDS", "edm_unet_key", "load_snapshot", "snapshot_model"]

# EDM's constructor defaults (training/networks.py): a snapshot records only the kwargs its run passed.
EDM_SONG_UNET = dict(label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4,
                     num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0.0, embedding_type="positional",
                     channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
EDM_DHARIWAL_UNET = dict(label_dim=0, augment_dim=0, model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4,
                         num_blocks=3, attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0.0)
# Network class -> (architecture here, EDM's defaults).
NETWORKS = {"SongUNet": ("ddpmpp", EDM_SONG_UNET), "DhariwalUNet": ("adm", EDM_DHARIWAL_UNET)}


def _finite(state: dict, key: str, default: float) -> float:
    """EDMPrecond's sigma_min = 0 and sigma_max = inf mean 'no bound': EDM samples on [0.002, 80] then."""
    value = float(state.get(key, default))
    return value if 0 < value < math.inf else default


def _edm(st: dict, loss: ClassRecord | None) -> Process:
    """EDMPrecond: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4;
    P_mean, P_std from the snapshot's EDMLoss where it has one."""
    kw = dict(sigma_data=float(st.get("sigma_data", 0.5)), sigma_min=_finite(st, "sigma_min", 0.002),
              sigma_max=_finite(st, "sigma_max", 80.0))
    if loss is not None and loss.class_name == "EDMLoss":
        kw.update(P_mean=float(loss.state["P_mean"]), P_std=float(loss.state["P_std"]))
    return make_process("edm", **kw)


def _iddpm(st: dict, loss: ClassRecord | None) -> Process:
    """iDDPMPrecond: c_skip = 1, c_out = -s, c_in = 1/sqrt(s^2+1), c_noise = M-1-(index of the nearest u_j) -- a DDPM
    epsilon network on the discrete levels u_0 > ... > u_{M-1} its record stores (buffer ``u``)."""
    u = st["_buffers"]["u"].double()[: int(st["M"])].flip(0)
    return DiscreteVP((1 / (1 + u**2)).tolist(), "epsilon", quantize=True)


def _vp(st: dict) -> dict:
    return dict(beta_d=float(st["beta_d"]), beta_min=float(st["beta_min"]), M=int(st["M"]),
                epsilon_t=float(st["epsilon_t"]))


def _ve(st: dict) -> dict:
    return dict(sigma_min=float(st["sigma_min"]), sigma_max=float(st["sigma_max"]))


def _fdm(st: dict, multiplier: float) -> dict:
    return dict(multiplier=multiplier, fdm_beta_min=float(st["fdm_beta_min"]), fdm_beta_d=float(st["fdm_beta_d"]))


# Preconditioning class -> its process, from the record's attributes (what its forward() reads) and its loss record.
# FDM's VE preconditioning ignores its multiplier (s = e^{-B}(1 + B) with m = 1), so it maps to multiplier 1.
PRECONDS: dict[str, Callable[[dict, ClassRecord | None], Process]] = {
    "EDMPrecond": _edm,
    "VPPrecond": lambda st, loss: make_process("vp", **_vp(st)),
    "VEPrecond": lambda st, loss: make_process("ve", **_ve(st)),
    "FDM_EDMPrecond": lambda st, loss: make_process(
        "fdm-edm", sigma_data=float(st["sigma_data"]), sigma_min=float(st["sigma_min"]),
        sigma_max=float(st["sigma_max"]), warmup_ite=FDM_WARMUP["edm"], **_fdm(st, float(st["fdm_multiplier"]))),
    "FDM_VPPrecond": lambda st, loss: make_process(
        "fdm-vp", **_vp(st), warmup_ite=FDM_WARMUP["vp"], **_fdm(st, float(st["fdm_multiplier"]))),
    "FDM_VEPrecond": lambda st, loss: make_process(
        "fdm-ve", **_ve(st), warmup_ite=FDM_WARMUP["ve"], **_fdm(st, 1.0)),
    "iDDPMPrecond": _iddpm,
}
# The network's output heads: iDDPM's also predict the variance (2C channels), of which EDM uses the first C.
_HEADS = ("out_conv.weight", "out_conv.bias", "aux_conv.weight", "aux_conv.bias")

_BLOCK = re.compile(r"^(enc|dec)\.(\d+)x\d+_(\w+?)\.(.+)$")


def edm_unet_key(key: str, img_resolution: int, num_levels: int) -> str | None:
    """The name here of an EDM U-Net tensor (``SongUNet``/``DhariwalUNet``: ``enc.16x16_block0.conv0.weight`` ->
    ``encoder.0.blocks.0.conv0.weight``); None for the fixed resampling filters, which are rebuilt from the config."""
    if key.endswith("resample_filter"):
        return None
    m = _BLOCK.match(key)
    if m is None:  # the mapping network, out_norm, out_conv: the same names
        return key
    part, res, layer, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    level = int(math.log2(img_resolution // res))
    if part == "enc":
        names = {"conv": "conv_in", "down": f"encoder.{level}.down", "aux_skip": f"encoder.{level}.aux_skip",
                 "aux_residual": f"encoder.{level}.aux_residual.0"}
        block = f"encoder.{level}.blocks"
    else:
        dec = f"decoder.{num_levels - 1 - level}"
        names = {"in0": f"{dec}.pre.0", "in1": f"{dec}.pre.1", "up": f"{dec}.pre.0", "aux_norm": f"{dec}.aux_norm",
                 "aux_conv": f"{dec}.aux_conv"}
        block = f"{dec}.blocks"
    if layer in names:
        return f"{names[layer]}.{rest}"
    if layer.startswith("block") and layer[5:].isdigit():
        return f"{block}.{int(layer[5:])}.{rest}"
    raise UserError(f"snapshot tensor {key!r} has no counterpart in this library's U-Net")


def _qkv_heads_last(t: Tensor, heads: int) -> Tensor:
    """EDM's attention reads q, k, v interleaved per channel, (heads, C/heads, 3); here they are (3, heads, C/heads)
    blocks of the qkv projection's output channels."""
    c = t.shape[0] // 3
    return t.reshape(heads, c // heads, 3, *t.shape[1:]).movedim(2, 0).reshape(t.shape)


def _convert(tensors: dict[str, Tensor], cfg: dict, arch: str) -> dict[str, Tensor]:
    """Snapshot tensors -> this library's state dict for ``build_net(**cfg)``, in fp32."""
    num_levels = len(cfg["channel_mult"])
    out = {}
    for key, value in tensors.items():
        name = edm_unet_key(key, cfg["img_resolution"], num_levels)
        if name is None:
            continue
        value = value.float()
        if name.endswith(("qkv.weight", "qkv.bias")):
            heads = 1 if arch != "adm" else value.shape[0] // 3 // 64
            value = _qkv_heads_last(value, heads)
        if arch == "adm" and name == "map_layer0.weight":  # EDM's ADM embedding is [cos, sin], ours [sin, cos]
            value = value.roll(value.shape[1] // 2, dims=1)
        if arch == "adm" and name == "map_augment.weight":  # its output is added to that embedding
            value = value.roll(value.shape[0] // 2, dims=0)
        if name.endswith(_HEADS):
            value = value[: cfg["out_channels"]]
        out[name] = value.contiguous()
    return out


def snapshot_model(ema: ClassRecord, loss: ClassRecord | None = None, source: str = "snapshot") -> ProcessModel:
    """The ``ProcessModel`` of an EDM/FDM preconditioned network record (a snapshot's ``ema``)."""
    if ema.class_name not in PRECONDS:
        raise UserError(f"{source}: unsupported preconditioning class {ema.class_name!r}; supported: "
                        f"{', '.join(PRECONDS)}")
    inner = (ema.state.get("_modules") or {}).get("model")
    if not isinstance(inner, ClassRecord) or inner.class_name not in NETWORKS:
        name = inner.class_name if isinstance(inner, ClassRecord) else type(inner).__name__
        raise UserError(f"{source}: unsupported network class {name!r}; supported: {', '.join(NETWORKS)}")
    arch, defaults = NETWORKS[inner.class_name]
    kwargs = inner.init_kwargs
    unknown = sorted(set(kwargs) - set(defaults) - {"img_resolution", "in_channels", "out_channels"})
    if unknown:
        raise UserError(f"{source}: {inner.class_name} option {unknown[0]!r} is not supported")
    options = {**defaults, **{k: v for k, v in kwargs.items() if k in defaults}}
    if options.get("embedding_type") == "fourier":
        arch = "ncsnpp"
    st = ema.state
    out_channels = int(st.get("img_channels", 0)) if ema.class_name == "iDDPMPrecond" else int(kwargs["out_channels"])
    cfg = net_config(arch, img_resolution=int(kwargs["img_resolution"]), in_channels=int(kwargs["in_channels"]),
                     out_channels=out_channels,
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})
    net = build_net(**cfg)
    try:
        net.load_state_dict(_convert(inner.tensors(), cfg, arch))
    except RuntimeError as e:
        raise UserError(f"{source}: the tensors do not fit its {inner.class_name} "
                        f"({str(e).splitlines()[1].strip()})") from None
    try:
        process = PRECONDS[ema.class_name](st, loss)
        data_shape = (int(st["img_channels"]), int(st["img_resolution"]), int(st["img_resolution"]))
    except KeyError as e:
        raise UserError(f"{source}: its {ema.class_name} record lacks {e}") from None
    return ProcessModel(net, process, cfg, data_shape).eval()


def load_snapshot(path: str | Path) -> ProcessModel:
    """An EDM/FDM ``network-snapshot-*.pkl`` (``{'ema': net, 'loss_fn': ..., ...}``, or a pickled network alone)."""
    root = load_pickle(path)
    if isinstance(root, dict) and isinstance(root.get("ema"), ClassRecord):
        ema, loss = root["ema"], root.get("loss_fn")
    elif isinstance(root, ClassRecord):
        ema, loss = root, None
    else:
        raise UserError(f"{path}: not an NVlabs/edm or FDM network snapshot (no 'ema' network record)")
    try:
        return snapshot_model(ema, loss if isinstance(loss, ClassRecord) else None, str(path))
    except (TypeError, ValueError, AttributeError) as e:  # records of the right names holding the wrong things
        raise UserError(f"{path}: a malformed {ema.class_name} record ({e})") from None
