"""What the compiled U-Net's per-channel GroupNorm and broadcast upsampling buy, on the GPU.

Parts, each written to ``norm_ablation_<part>.json`` under ``--out-dir``:

- ``micro``: one UNetBlock norm path, ``dropout(silu(GN(h + p)))``, compiled, bf16 channels_last, at the six
  GroupNorm shapes that make up 71 of the 73 norms of EDM's CIFAR-10 DDPM++ network: forward + backward at batch 512
  (training), forward at 1024 (sampling). Forms: per-channel statistics (the library's), per-channel moments
  E[x^2] - E[x]^2, the group view it replaced (session 4), eager native ``group_norm``; a compiled ``2 x`` pass as
  the memory-bandwidth yardstick. Then nearest upsampling, forward + backward, as a broadcast (library) and as
  ``F.interpolate``.
- ``full``: ``bench throughput`` fast mode; ``full_replaced``: the same with the replaced forms patched back in.

    python benchmarks/perf/norm_ablation.py --out-dir res --parts micro,full,full_replaced
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdiffusion.bench import throughput
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.timing import timed_windows
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.nets import unet

DROPOUT = 0.13  # EDM's CIFAR-10 setting
# (batch, channels, resolution) of the DDPM++ CIFAR-10 norms: training (forward + backward) and sampling (forward)
TRAIN_SHAPES = [(512, c, r) for r in (32, 16, 8) for c in (256, 512)]
SAMPLE_SHAPES = [(1024, 256, r) for r in (32, 16, 8)]
UP_SHAPE = (512, 256, 16)


def group_view_norm(self: unet.GroupNorm, x: Tensor) -> Tensor:
    """Session 4's compiled form: statistics reduced over (pixels, channels of a group) of an NHWC view."""
    n, c, h, w = x.shape
    xg = x.float().permute(0, 2, 3, 1).reshape(n, h * w, self.num_groups, c // self.num_groups)
    var, mean = torch.var_mean(xg, dim=(1, 3), keepdim=True, correction=0)
    y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(n, h, w, c)
    return torch.addcmul(self.bias.float(), y, self.weight.float()).permute(0, 3, 1, 2).to(x.dtype)


def per_channel_sums_norm(self: unet.GroupNorm, x: Tensor) -> Tensor:
    """Per-channel first and second moments (no Welford), ``var_g = <E[x^2]>_g - mean_g^2``."""
    n, c = x.shape[:2]
    m1 = x.float().mean(dim=(2, 3)).view(n, self.num_groups, -1).mean(-1, keepdim=True)
    m2 = x.float().square().mean(dim=(2, 3)).view(n, self.num_groups, -1).mean(-1, keepdim=True)
    scale = torch.rsqrt(m2 - m1.square() + self.eps) * self.weight.float().view(self.num_groups, -1)
    shift = self.bias.float().view(self.num_groups, -1) - m1 * scale
    return torch.addcmul(shift.view(n, c, 1, 1), x.float(), scale.view(n, c, 1, 1)).to(x.dtype)


def interpolate_upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _ms(fn: Callable[[], object], dev: torch.device) -> float:
    return 1000 * timed_windows(fn, dev, warmup=5, window=10, repeats=5)


def _time_norm(form: Callable, compiled: bool, norm: unet.GroupNorm, shape: tuple[int, int, int], backward: bool,
               dev: torch.device) -> float:
    """ms of the block's norm path with GroupNorm ``form``: forward + backward to (h, weight, bias) as in training,
    or the forward alone as in sampling (dropout off)."""
    n, c, res = shape
    h = _channels_last(n, c, res, dev).requires_grad_(backward)
    p = torch.randn(n, c, 1, 1, device=dev, dtype=torch.bfloat16)

    def block(x: Tensor) -> Tensor:
        return F.dropout(F.silu(form(norm, x + p)), DROPOUT, training=backward)

    fn = torch.compile(block, dynamic=False) if compiled else block
    x = h if compiled else h.contiguous()  # the native kernel wants NCHW
    if not backward:
        with torch.no_grad():
            return _ms(lambda: fn(x), dev)
    g = torch.randn_like(h)
    return _ms(lambda: torch.autograd.grad(fn(x), (h, norm.weight, norm.bias), g), dev)


def _time_upsample(up: Callable[[Tensor], Tensor], x: Tensor, dev: torch.device) -> dict:
    fn = torch.compile(up, dynamic=False)
    g = torch.randn_like(up(x.detach()))
    return {"forward_backward_ms": _ms(lambda: torch.autograd.grad(fn(x), x, g), dev)}


def _time_bandwidth(h: Tensor, dev: torch.device) -> dict:
    twice = torch.compile(lambda t: t * 2, dynamic=False)
    ms = _ms(lambda: twice(h), dev)
    return {"ms": ms, "gb_per_s": 2 * h.numel() * h.element_size() / ms / 1e6}


def _channels_last(n: int, c: int, res: int, dev: torch.device) -> Tensor:
    return torch.randn(n, c, res, res, device=dev, dtype=torch.bfloat16).to(memory_format=torch.channels_last)


def micro(dev: torch.device) -> dict:
    """ms per call of each GroupNorm form at every shape (and the bandwidth yardstick), then of each upsampling."""
    out: dict = {}
    variants = {"per_channel": (unet.GroupNorm._forward_nhwc, True), "per_channel_sums": (per_channel_sums_norm, True),
                "group_view": (group_view_norm, True), "eager_native": (unet.GroupNorm.forward, False)}
    for backward, shapes in ((True, TRAIN_SHAPES), (False, SAMPLE_SHAPES)):
        for shape in shapes:
            norm = unet.GroupNorm(shape[1]).to(dev)
            key = f"{'forward_backward' if backward else 'forward'}@{'x'.join(map(str, shape))}"
            out[key] = {name: _time_norm(form, compiled, norm, shape, backward, dev)
                        for name, (form, compiled) in variants.items()}
            out[key]["bandwidth_2x"] = _time_bandwidth(_channels_last(*shape, dev), dev)
            print(key, out[key], flush=True)
            torch._dynamo.reset()
    n, c, res = UP_SHAPE
    x = _channels_last(n, c, res, dev).requires_grad_()
    for name, up in {"broadcast": unet.upsample_nearest_nhwc, "interpolate": interpolate_upsample}.items():
        out[f"upsample_{name}@{n}x{c}x{res}x{res}"] = _time_upsample(up, x, dev)
    print(out, flush=True)
    return out


def full(args: argparse.Namespace, replaced: bool) -> dict:
    if replaced:
        unet.GroupNorm._forward_nhwc = group_view_norm
        unet.upsample_nearest_nhwc = interpolate_upsample
    return throughput.run(args.net, "digits32", [args.batch], ["fast"], warmup=5, window=5, repeats=5,
                          sample_batch=args.sample_batch, device="auto")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--parts", default="micro,full", help="comma list of micro, full, full_replaced")
    p.add_argument("--net", default="ddpmpp-cifar10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--sample-batch", type=int, default=1024)
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    for part in args.parts.split(","):
        result = micro(dev) if part == "micro" else full(args, replaced=part == "full_replaced")
        atomic_write_json(args.out_dir / f"norm_ablation_{part}.json", {**provenance(dev), "part": part, **result})
        print(json.dumps(result)[:2000], flush=True)


if __name__ == "__main__":
    main()
