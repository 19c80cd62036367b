"""Network profiles: parameters, FLOPs per call, activation memory of a training pass and latency per call.

    fastdiffusion info --net cunet-small --resolution 32 --channels 1

- **FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass built on the meta device
  (shapes only, so any batch is free and the count does not depend on which attention kernel a device would pick:
  SDPA is counted as its two batched matmuls). Convolutions, matmuls and attention count; norms and activations
  do not. One multiply-add is 2 FLOPs.
- **Activation memory** of one forward + backward: on CUDA the peak allocated memory of a real training pass minus
  what was allocated before it (weights and their gradients already allocated); elsewhere the bytes of the distinct
  storages autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``), parameters and
  buffers excluded, counted in fp32 on the meta device.
- **Latency** is the median of ``repeats`` timed inference calls (no grad, eval mode) after ``warmup`` calls. On a
  CPU a batch whose measurement is estimated (from the per-image time of the largest batch timed so far) to take
  longer than ``max_cpu_seconds`` is skipped, and the result says so. ``cuda_graphs`` times the network compiled
  with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: one launch per call, what sampling uses on GPU), which
  matters at batch 1, where an eager call is bound by kernel launches rather than by its FLOPs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fastdiffusion.errors import UserError
from fastdiffusion.nets import build_net, net_config

__all__ = [
    "profile_net", "add_info_arguments", "info_net", "count_flops", "flops_by_operator", "saved_activation_bytes",
]


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available")
    return dev


def _inputs(cfg: dict, batch: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    shape = (batch, cfg["in_channels"])
    if "img_resolution" in cfg:
        shape += (cfg["img_resolution"],) * 2
    return torch.randn(shape, device=device), torch.zeros(batch, device=device)


def flops_by_operator(cfg: dict, batch: int = 1) -> dict[str, int]:
    """FLOPs of one forward call at ``batch`` of the network ``build_net(**cfg)`` per ATen operator (``convolution``,
    ``bmm``, ...), largest first, counted on the meta device."""
    with torch.device("meta"):
        net = build_net(**cfg).eval()
        x, c = _inputs(cfg, batch, "meta")
    from torch.utils.flop_counter import FlopCounterMode  # here: every CLI start imports this module's arguments

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, c)
    counts = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def count_flops(cfg: dict, batch: int = 1) -> int:
    """FLOPs of one forward call at ``batch`` of the network ``build_net(**cfg)``, counted on the meta device."""
    return sum(flops_by_operator(cfg, batch).values())


def saved_activation_bytes(net: nn.Module, x: Tensor, c: Tensor) -> int:
    """Bytes of the distinct storages autograd saves during ``net(x, c)`` for the backward pass, parameters and
    buffers excluded (a tensor saved by several ops, or views of one storage, count once)."""
    exclude = {t.untyped_storage()._cdata for t in (*net.parameters(), *net.buffers())}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in exclude:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, c)
    return sum(seen.values())


def _cuda_activation_bytes(net: nn.Module, x: Tensor, c: Tensor, bf16: bool) -> int:
    def step() -> None:
        with torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            out = net(x, c)
        out.float().square().mean().backward()

    step()  # allocates the parameter gradients, which are not activations
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _median_call_seconds(net: nn.Module, x: Tensor, c: Tensor, bf16: bool, warmup: int, repeats: int) -> float:
    from fastdiffusion.bench.timing import timed_windows

    @torch.no_grad()
    def call() -> None:
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            net(x, c)

    return timed_windows(call, x.device, warmup, 1, repeats)


def profile_net(
    arch: str,
    img_resolution: int | None = 32,
    in_channels: int = 3,
    device: str | torch.device = "auto",
    batches: Sequence[int] = (1, 256),
    *,
    net_options: dict[str, Any] | None = None,
    bf16: bool = False,
    cuda_graphs: bool = False,
    warmup: int = 3,
    repeats: int = 10,
    max_cpu_seconds: float = 10.0,
) -> dict[str, Any]:
    """Profile the network ``arch`` (a preset or an architecture) built for ``in_channels`` x ``img_resolution``^2
    inputs (see the module docstring for what each figure means). Returns a JSON-serialisable dict whose per-batch
    entries are keyed by the batch size as a string; ``skipped`` says which measurements were not made and why."""
    dev = _resolve_device(device)
    if cuda_graphs and dev.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device, not {dev}")
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise UserError(f"batches must be positive integers, got {list(batches)}")
    cfg = net_config(arch, img_resolution=img_resolution, in_channels=in_channels, **(net_options or {}))
    from fastdiffusion.bench.provenance import device_name

    result: dict[str, Any] = {
        "net": arch, "net_config": cfg, "device": str(dev), "device_name": device_name(dev),
        "torch": torch.__version__, "precision": "bf16" if bf16 else "fp32",
        "parameters": None, "flops_per_call": {}, "flops_per_image": None, "flops_per_image_by_operator": {},
        "activation_bytes": {}, "activation_method": "cuda peak" if dev.type == "cuda" else "saved tensors (fp32)",
        "latency_s": {}, "latency_stat": f"median of {repeats} calls after {warmup} warm-up, no grad"
                                         + (", CUDA graphs (torch.compile reduce-overhead)" if cuda_graphs else ""),
        "skipped": {},
    }  # fmt: skip
    for b in batches:
        result["flops_per_call"][str(b)] = count_flops(cfg, b)
    result["flops_per_image_by_operator"] = flops_by_operator(cfg)
    result["flops_per_image"] = sum(result["flops_per_image_by_operator"].values())

    net = build_net(**cfg).to(dev)
    result["parameters"] = sum(p.numel() for p in net.parameters())
    per_image_s = None
    if dev.type == "cpu" and batches[0] > 1:  # a batch-1 probe to estimate the cost of the first batch
        per_image_s = _median_call_seconds(net.eval(), *_inputs(cfg, 1, dev), bf16, 1, 1)
    for b in batches:
        key = str(b)
        if dev.type == "cpu" and per_image_s is not None:
            estimate = per_image_s * b * (warmup + repeats + 1)
            if estimate > max_cpu_seconds:
                result["skipped"][key] = f"estimated {estimate:.0f} s on this CPU (> {max_cpu_seconds:g} s)"
                result["latency_s"][key] = None
                result["activation_bytes"][key] = _meta_activation_bytes(cfg, b)
                continue
        x, c = _inputs(cfg, b, dev)
        net.train()
        try:
            if dev.type == "cuda":
                result["activation_bytes"][key] = _cuda_activation_bytes(net, x, c, bf16)
            else:
                result["activation_bytes"][key] = _meta_activation_bytes(cfg, b)
            net.eval()
            timed = torch.compile(net, mode="reduce-overhead", dynamic=False) if cuda_graphs else net
            seconds = _median_call_seconds(timed, x, c, bf16, max(warmup, 3) if cuda_graphs else warmup, repeats)
        except torch.cuda.OutOfMemoryError:
            result["skipped"][key] = "out of device memory"
            result["latency_s"][key] = None
            net.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        result["latency_s"][key] = seconds
        per_image_s = seconds / b
        net.zero_grad(set_to_none=True)
    return result


def _meta_activation_bytes(cfg: dict, batch: int) -> int:
    with torch.device("meta"):
        net = build_net(**cfg).train()
        x, c = _inputs(cfg, batch, "meta")
    return saved_activation_bytes(net, x, c)


# ---------------------------------------------------------------------------------------------------------------------
# `fastdiffusion info --net NAME`


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``info`` options that profile one network (``--net``); without ``--net``, ``info`` prints its summary."""
    g = parser.add_argument_group("network profile (with --net)")
    g.add_argument("--net", help="profile this network preset or architecture: parameters, FLOPs, memory, latency")
    g.add_argument("--resolution", type=int, default=32, help="image side length in pixels (default 32)")
    g.add_argument("--channels", type=int, default=3, help="input (= output) channels (default 3)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    g.add_argument("--batches", type=int, nargs="+", default=[1, 256], help="batch sizes to time (default 1 256)")
    g.add_argument("--net-opt", dest="net_options", action="append", metavar="KEY=VALUE",
                   help="override a network option (repeatable), e.g. solver_steps=2")  # fmt: skip
    g.add_argument("--bf16", action="store_true", help="time (and on CUDA measure memory) under bf16 autocast")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="time the network with CUDA graphs (torch.compile reduce-overhead), as GPU sampling runs it")
    g.add_argument("--json", action="store_true", help="print the profile as JSON")


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_profile(p: dict[str, Any]) -> str:
    cfg = p["net_config"]
    shape = f"{cfg['in_channels']}x{cfg['img_resolution']}x{cfg['img_resolution']}" if "img_resolution" in cfg \
        else f"{cfg['in_channels']}"  # fmt: skip
    lines = [f"net {p['net']} (arch {cfg['arch']}), input {shape}, {p['device_name']}, {p['precision']}",
             f"  parameters         {p['parameters']:,} ({_si(p['parameters'], '')})".rstrip()]
    for b, flops in p["flops_per_call"].items():
        act = p["activation_bytes"].get(b)
        lat = p["latency_s"].get(b)
        timing = f"{lat * 1e3:.2f} ms/call" if lat is not None else f"not timed: {p['skipped'].get(b, '?')}"
        lines.append(f"  batch {b:>5}: {_si(flops, 'FLOP')}/call, activations {_si(act, 'B') if act else '?'}, "
                     f"{timing}")  # fmt: skip
    lines.append("  FLOPs per image: " + ", ".join(f"{op} {_si(n, 'FLOP')} ({n / p['flops_per_image']:.1%})"
                                                   for op, n in p["flops_per_image_by_operator"].items()))
    lines.append(f"  (FLOPs: FlopCounterMode on meta; activations: {p['activation_method']}; "
                 f"latency: {p['latency_stat']})")  # fmt: skip
    return "\n".join(lines)


def info_net(args: argparse.Namespace) -> dict[str, Any]:
    """``fastdiffusion info --net NAME ...``: print the profile (text, or JSON with ``--json``) and return it."""
    from ..cli_args import parse_kv

    options = parse_kv(getattr(args, "net_options", None), "--net-opt")
    if args.resolution < 1 or args.channels < 1:
        raise UserError("--resolution and --channels must be positive")
    p = profile_net(args.net, args.resolution, args.channels, args.device, args.batches, net_options=options,
                    bf16=args.bf16, cuda_graphs=args.cuda_graphs)  # fmt: skip
    print(json.dumps(p, indent=2) if args.json else format_profile(p))
    return p
