"""NVlabs/edm's network snapshots for tests, written from the published layout and formulas of its
``training/networks.py`` -- independent of the importer in ``fastdiffusion.models.edm_snapshot``:

- ``edm_layout``: the module names, in construction order, and tensor shapes of EDM's ``SongUNet`` / ``DhariwalUNet``
  for any config (``enc.16x16_block0.conv0.weight``, the fixed ``resample_filter`` buffers included);
- ``edm_forward``: their forward pass in float64 on such a named tensor dict (EDM's attention layout, its embeddings'
  [cos, sin] order, its fused down-sampling convolution, its decoder's concatenation rule);
- ``write_snapshot``: a pickle in EDM's snapshot format -- persistent-class records through
  ``torch_utils.persistence._reconstruct_persistent_obj``, tensors through the standard pickler (``_rebuild_tensor_v2``
  of legacy ``torch.save`` storage blobs), containers as ``ModuleDict``.
"""

from __future__ import annotations

import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

SONG_DEFAULTS = dict(label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4,
                     num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0, embedding_type="positional",
                     channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
ADM_DEFAULTS = dict(label_dim=0, augment_dim=0, model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4,
                    num_blocks=3, attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0)


# -- layout ------------------------------------------------------------------------------------------------------------
def _block(name: str, cin: int, cout: int, emb: int, *, adm: bool, up: bool = False, down: bool = False,
           attention: bool = False, filt: list) -> dict:
    heads = (cout // 64 if adm else 1) if attention else 0
    kernel_skip = 1 if (cout != cin or not adm) else 0  # SongUNet: resample_proj=True; ADM: False
    return dict(kind="block", name=name, cin=cin, cout=cout, emb=emb, up=up, down=down, heads=heads, adm=adm,
                skip=(cout != cin or up or down), skip_kernel=kernel_skip, filt=filt)


def edm_layout(kind: str, cfg: dict) -> dict:
    """{'map': [...], 'enc': [...], 'dec': [...], 'out': [...]} module specs of EDM's network ``kind`` ('SongUNet' or
    'DhariwalUNet') with constructor kwargs ``cfg`` (img_resolution, in_channels, out_channels + options)."""
    adm = kind == "DhariwalUNet"
    c = {**(ADM_DEFAULTS if adm else SONG_DEFAULTS), **cfg}
    mc, mult, res0 = c["model_channels"], c["channel_mult"], c["img_resolution"]
    emb = mc * c["channel_mult_emb"]
    filt = [1, 1] if adm else c["resample_filter"]
    noise_ch = mc if adm else mc * c["channel_mult_noise"]
    maps = []
    if not adm and c["embedding_type"] == "fourier":
        maps.append(dict(kind="buffer", name="map_noise.freqs", shape=(noise_ch // 2,)))
    if c["label_dim"] and not adm:
        maps.append(dict(kind="linear", name="map_label", i=c["label_dim"], o=noise_ch, bias=True))
    if c["augment_dim"]:
        maps.append(dict(kind="linear", name="map_augment", i=c["augment_dim"], o=noise_ch, bias=False))
    maps += [dict(kind="linear", name="map_layer0", i=noise_ch, o=emb, bias=True),
             dict(kind="linear", name="map_layer1", i=emb, o=emb, bias=True)]
    if c["label_dim"] and adm:
        maps.append(dict(kind="linear", name="map_label", i=c["label_dim"], o=emb, bias=False))

    enc, dec = [], []
    cout, caux = c["in_channels"], c["in_channels"]
    for level, m in enumerate(mult):
        res = res0 >> level
        r = f"{res}x{res}"
        if level == 0:
            cin, cout = cout, mc * m if adm else mc
            enc.append(dict(kind="conv", name=f"enc.{r}_conv", i=cin, o=cout, k=3))
        else:
            enc.append(_block(f"enc.{r}_down", cout, cout, emb, adm=adm, down=True, filt=filt))
            if not adm and c["encoder_type"] == "skip":
                enc.append(dict(kind="conv", name=f"enc.{r}_aux_down", i=caux, o=caux, k=0, down=True, filt=filt))
                enc.append(dict(kind="conv", name=f"enc.{r}_aux_skip", i=caux, o=cout, k=1))
            if not adm and c["encoder_type"] == "residual":
                enc.append(dict(kind="conv", name=f"enc.{r}_aux_residual", i=caux, o=cout, k=3, down=True, filt=filt,
                                fused=True))
                caux = cout
        for idx in range(c["num_blocks"]):
            cin, cout = cout, mc * m
            enc.append(_block(f"enc.{r}_block{idx}", cin, cout, emb, adm=adm, attention=res in c["attn_resolutions"],
                              filt=filt))
    skips = [s["cout"] if s["kind"] == "block" else s["o"] for s in enc if "aux" not in s["name"]]
    for level, m in reversed(list(enumerate(mult))):
        res = res0 >> level
        r = f"{res}x{res}"
        if level == len(mult) - 1:
            dec.append(_block(f"dec.{r}_in0", cout, cout, emb, adm=adm, attention=True, filt=filt))
            dec.append(_block(f"dec.{r}_in1", cout, cout, emb, adm=adm, filt=filt))
        else:
            dec.append(_block(f"dec.{r}_up", cout, cout, emb, adm=adm, up=True, filt=filt))
        for idx in range(c["num_blocks"] + 1):
            cin, cout = cout + skips.pop(), mc * m
            attn = res in c["attn_resolutions"] and (adm or idx == c["num_blocks"])
            dec.append(_block(f"dec.{r}_block{idx}", cin, cout, emb, adm=adm, attention=attn, filt=filt))
        if not adm and (c["decoder_type"] == "skip" or level == 0):
            if c["decoder_type"] == "skip" and level < len(mult) - 1:
                oc = c["out_channels"]
                dec.append(dict(kind="conv", name=f"dec.{r}_aux_up", i=oc, o=oc, k=0, up=True, filt=filt))
            dec.append(dict(kind="norm", name=f"dec.{r}_aux_norm", c=cout, eps=1e-6))
            dec.append(dict(kind="conv", name=f"dec.{r}_aux_conv", i=cout, o=c["out_channels"], k=3))
    out = []
    if adm:
        out = [dict(kind="norm", name="out_norm", c=cout, eps=1e-5),
               dict(kind="conv", name="out_conv", i=cout, o=c["out_channels"], k=3)]
    return dict(kind=kind, cfg=c, map=maps, enc=enc, dec=dec, out=out)


def _filter(filt: list) -> torch.Tensor:
    f = torch.as_tensor(filt, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


def _shapes(spec: dict) -> dict[str, tuple]:
    k, n = spec["kind"], spec["name"]
    if k == "buffer":
        return {n: spec["shape"]}
    if k == "linear":
        return {f"{n}.weight": (spec["o"], spec["i"]), **({f"{n}.bias": (spec["o"],)} if spec["bias"] else {})}
    if k == "norm":
        return {f"{n}.weight": (spec["c"],), f"{n}.bias": (spec["c"],)}
    if k == "conv":
        out = {}
        if spec["k"]:
            out = {f"{n}.weight": (spec["o"], spec["i"], spec["k"], spec["k"]), f"{n}.bias": (spec["o"],)}
        if spec.get("up") or spec.get("down"):
            out[f"{n}.resample_filter"] = "filter"
        return out
    cin, cout, emb, updown = spec["cin"], spec["cout"], spec["emb"], spec["up"] or spec["down"]
    out = {**_shapes(dict(kind="norm", name=f"{n}.norm0", c=cin)),
           **_shapes(dict(kind="conv", name=f"{n}.conv0", i=cin, o=cout, k=3, up=spec["up"], down=spec["down"])),
           **_shapes(dict(kind="linear", name=f"{n}.affine", i=emb, o=cout * (2 if spec["adm"] else 1), bias=True)),
           **_shapes(dict(kind="norm", name=f"{n}.norm1", c=cout)),
           **_shapes(dict(kind="conv", name=f"{n}.conv1", i=cout, o=cout, k=3))}
    if spec["skip"]:
        out.update(_shapes(dict(kind="conv", name=f"{n}.skip", i=cin, o=cout, k=spec["skip_kernel"],
                                up=spec["up"], down=spec["down"])))
    if spec["heads"]:
        out.update({**_shapes(dict(kind="norm", name=f"{n}.norm2", c=cout)),
                    **_shapes(dict(kind="conv", name=f"{n}.qkv", i=cout, o=3 * cout, k=1)),
                    **_shapes(dict(kind="conv", name=f"{n}.proj", i=cout, o=cout, k=1))})
    assert not updown or f"{n}.conv0.resample_filter" in out
    return out


def random_tensors(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of the layout: weights ~ N(0, 1/fan_in), biases and norm affines ~ 0.1 N(0, 1) (+1 for norm
    scales), the FIR filters as EDM stores them; float32."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    filt = layout["cfg"].get("resample_filter", [1, 1]) if layout["kind"] == "SongUNet" else [1, 1]
    for spec in layout["map"] + layout["enc"] + layout["dec"] + layout["out"]:
        for name, shape in _shapes(spec).items():
            if shape == "filter":
                out[name] = _filter(filt)
            elif name.endswith("freqs"):
                out[name] = torch.randn(shape, generator=g) * 16
            elif len(shape) > 1:
                out[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
            else:
                scale = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                out[name] = scale + 0.1 * torch.randn(shape, generator=g)
    return out


# -- forward (float64) -------------------------------------------------------------------------------------------------
def _conv(p: dict, spec: dict, x: torch.Tensor) -> torch.Tensor:
    n = spec["name"]
    w, b = p.get(f"{n}.weight"), p.get(f"{n}.bias")
    up, down = spec.get("up", False), spec.get("down", False)
    f = _filter(spec.get("filt", [1, 1])).double()
    w_pad = w.shape[-1] // 2 if w is not None else 0
    f_pad = (f.shape[-1] - 1) // 2
    if spec.get("fused") and down and w is not None:
        x = F.conv2d(x, w, padding=w_pad + f_pad)
        x = F.conv2d(x, f.tile([w.shape[0], 1, 1, 1]), groups=w.shape[0], stride=2)
    else:
        if up:
            x = F.conv_transpose2d(x, (4 * f).tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=f_pad)
        if down:
            x = F.conv2d(x, f.tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=f_pad)
        if w is not None:
            x = F.conv2d(x, w, padding=w_pad)
    return x if b is None else x + b.reshape(1, -1, 1, 1)


def _norm(p: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.group_norm(x, min(32, x.shape[1] // 4), p[f"{name}.weight"], p[f"{name}.bias"], eps)


def _linear(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    y = x @ p[f"{name}.weight"].t()
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def _unet_block(p: dict, spec: dict, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    n, adm = spec["name"], spec["adm"]
    eps, skip_scale = (1e-5, 1.0) if adm else (1e-6, math.sqrt(0.5))
    orig = x
    x = _conv(p, dict(name=f"{n}.conv0", up=spec["up"], down=spec["down"], filt=spec["filt"]),
              F.silu(_norm(p, f"{n}.norm0", x, eps)))
    params = _linear(p, f"{n}.affine", emb)[:, :, None, None]
    if adm:
        scale, shift = params.chunk(2, dim=1)
        x = F.silu(shift + _norm(p, f"{n}.norm1", x, eps) * (scale + 1))
    else:
        x = F.silu(_norm(p, f"{n}.norm1", x + params, eps))
    x = _conv(p, dict(name=f"{n}.conv1"), x)
    if spec["skip"]:
        orig = _conv(p, dict(name=f"{n}.skip", up=spec["up"], down=spec["down"], filt=spec["filt"]), orig)
    x = (x + orig) * skip_scale
    if spec["heads"]:
        h = spec["heads"]
        q, k, v = _conv(p, dict(name=f"{n}.qkv"), _norm(p, f"{n}.norm2", x, eps)).reshape(
            x.shape[0] * h, x.shape[1] // h, 3, -1).unbind(2)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
        a = torch.einsum("nqk,nck->ncq", w, v)
        x = (_conv(p, dict(name=f"{n}.proj"), a.reshape(*x.shape)) + x) * skip_scale
    return x


def _positional(c: torch.Tensor, channels: int, endpoint: bool) -> torch.Tensor:
    freqs = torch.arange(channels // 2, dtype=torch.float64) / (channels // 2 - (1 if endpoint else 0))
    arg = torch.outer(c, (1 / 10000) ** freqs)
    return torch.cat([arg.cos(), arg.sin()], dim=1)


def edm_forward(layout: dict, tensors: dict, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None,
                augment: torch.Tensor | None = None) -> torch.Tensor:
    """EDM's ``SongUNet`` / ``DhariwalUNet`` forward in float64 on EDM-named tensors."""
    p = {k: v.double() for k, v in tensors.items()}
    c, adm = layout["cfg"], layout["kind"] == "DhariwalUNet"
    x, c_noise = x.double(), c_noise.double()
    if adm:
        emb = _positional(c_noise, c["model_channels"], endpoint=False)
        if augment is not None and "map_augment.weight" in p:
            emb = emb + _linear(p, "map_augment", augment.double())
        emb = _linear(p, "map_layer1", F.silu(_linear(p, "map_layer0", emb)))
        if "map_label.weight" in p:
            emb = emb + _linear(p, "map_label", labels.double())
        emb = F.silu(emb)
    else:
        channels = c["model_channels"] * c["channel_mult_noise"]
        if c["embedding_type"] == "fourier":
            arg = torch.outer(c_noise, 2 * math.pi * p["map_noise.freqs"])
            emb = torch.cat([arg.cos(), arg.sin()], dim=1)
        else:
            emb = _positional(c_noise, channels, endpoint=True)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # EDM swaps sin and cos
        if "map_label.weight" in p:
            emb = emb + _linear(p, "map_label", labels.double() * math.sqrt(c["label_dim"]))
        if augment is not None and "map_augment.weight" in p:
            emb = emb + _linear(p, "map_augment", augment.double())
        emb = F.silu(_linear(p, "map_layer1", F.silu(_linear(p, "map_layer0", emb))))

    skips, aux = [], x
    for spec in layout["enc"]:
        name = spec["name"]
        if "aux_down" in name:
            aux = _conv(p, spec, aux)
        elif "aux_skip" in name:
            x = skips[-1] = x + _conv(p, spec, aux)
        elif "aux_residual" in name:
            x = skips[-1] = aux = (x + _conv(p, spec, aux)) / math.sqrt(2)
        else:
            x = _unet_block(p, spec, x, emb) if spec["kind"] == "block" else _conv(p, spec, x)
            skips.append(x)
    aux, tmp = None, None
    for spec in layout["dec"]:
        name = spec["name"]
        if "aux_up" in name:
            aux = _conv(p, spec, aux)
        elif "aux_norm" in name:
            tmp = _norm(p, name, x, 1e-6)
        elif "aux_conv" in name:
            tmp = _conv(p, spec, F.silu(tmp))
            aux = tmp if aux is None else tmp + aux
        else:
            if x.shape[1] != spec["cin"]:
                x = torch.cat([x, skips.pop()], dim=1)
            x = _unet_block(p, spec, x, emb)
    if adm:
        return _conv(p, layout["out"][1], F.silu(_norm(p, "out_norm", x, 1e-5)))
    return aux


def iddpm_levels(m: int, c_1: float = 0.001, c_2: float = 0.008) -> torch.Tensor:
    """EDM's iDDPMPrecond noise levels u_0 > ... > u_{M-1} > u_M = 0: u_{j-1} = sqrt((u_j^2 + 1) /
    max(abar(j-1) / abar(j), C_1) - 1), abar(j) = sin^2(pi/2 j / (M (1 + C_2))), in fp32 as EDM stores them."""
    def abar(j: int) -> float:
        return math.sin(0.5 * math.pi * j / m / (c_2 + 1)) ** 2

    u = torch.zeros(m + 1)
    for j in range(m, 0, -1):
        ratio = abar(j - 1) / abar(j)
        u[j - 1] = ((u[j] ** 2 + 1) / max(ratio, c_1) - 1).sqrt()
    return u


# -- snapshot pickles --------------------------------------------------------------------------------------------------
# What would run if the module source were executed: the tests assert this file never appears.
MODULE_SRC = "import pathlib\npathlib.Path({marker!r}).write_text('the snapshot source ran')\n"


def _install_persistence_module() -> types.ModuleType:
    """A ``torch_utils.persistence`` module for the pickler to name (pickle writes a function by module and name)."""
    mod = sys.modules.get("torch_utils.persistence")
    if mod is None:
        pkg = types.ModuleType("torch_utils")
        mod = types.ModuleType("torch_utils.persistence")

        def _reconstruct_persistent_obj(meta):  # never called here: only its name is written
            raise AssertionError("not for loading")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
        pkg.persistence = mod
        sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = pkg, mod
    return mod


class Persistent:
    """An object of an EDM ``persistent_class``: pickles as EDM's ``_reconstruct_persistent_obj(meta)`` record."""

    def __init__(self, class_name: str, state: dict, module_src: str) -> None:
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return (_install_persistence_module()._reconstruct_persistent_obj, (meta,))


def _module_state(params: dict, buffers: dict, modules: dict, extra: dict | None = None) -> dict:
    return {"training": False, "_parameters": OrderedDict(params), "_buffers": OrderedDict(buffers),
            "_non_persistent_buffers_set": set(), "_modules": OrderedDict(modules), **(extra or {})}


def _tree(tensors: dict[str, torch.Tensor], src: str) -> dict:
    """Nested records from dotted names: leaves' parents hold parameters (buffers: ``freqs``, ``resample_filter``)."""
    root: dict = {}
    for name, value in tensors.items():
        node = root
        *path, leaf = name.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(name: str, node: dict):
        params = {k: torch.nn.Parameter(v, requires_grad=False) for k, v in node.items()
                  if isinstance(v, torch.Tensor) and k not in ("freqs", "resample_filter")}
        buffers = {k: v for k, v in node.items() if isinstance(v, torch.Tensor) and k in ("freqs", "resample_filter")}
        children = {k: build(k, v) for k, v in node.items() if isinstance(v, dict)}
        state = _module_state(params, buffers, children)
        if name in ("enc", "dec"):
            container = torch.nn.ModuleDict()
            container.__dict__.update(state)
            return container
        return Persistent("Module", state, src)

    return {k: build(k, v) for k, v in root.items()}


def write_snapshot(path: Path, precond: str, attrs: dict, net_kind: str, net_kwargs: dict,
                   tensors: dict[str, torch.Tensor], marker: Path, loss: tuple[str, dict] | None = None,
                   precond_kwargs: dict | None = None, precond_buffers: dict | None = None) -> None:
    """An EDM training snapshot ``{'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}`` at ``path``: preconditioning
    ``precond`` with attributes ``attrs`` (and buffers), its ``model`` a ``net_kind`` record with init kwargs
    ``net_kwargs`` and EDM-named ``tensors``. Every record carries source text that would write ``marker`` if run."""
    src = MODULE_SRC.format(marker=str(marker))
    _install_persistence_module()
    model_tree = _tree(tensors, src)
    net = Persistent(net_kind, _module_state({}, {}, model_tree, {"_init_args": (), "_init_kwargs": net_kwargs}), src)
    init = {**(precond_kwargs or {}), "model_type": net_kind}
    ema = Persistent(precond, _module_state({}, precond_buffers or {}, {"model": net},
                                            {"_init_args": (), "_init_kwargs": init, **attrs}), src)
    loss_rec = None if loss is None else Persistent(loss[0], {"_init_args": (), "_init_kwargs": {}, **loss[1]}, src)
    data = {"ema": ema, "loss_fn": loss_rec, "augment_pipe": None,
            "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "x.zip"}}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
