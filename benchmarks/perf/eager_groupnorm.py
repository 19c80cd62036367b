"""The eager (not compiled) GroupNorm on channels_last bf16 input, on the GPU: the native ``group_norm`` kernel (an
fp32 copy and an NCHW copy of its input) against the library's per-channel form, which reads the bf16 input directly
in each reduction and keeps the channels_last layout. Forward only, at the norm shapes of EDM's CIFAR-10 DDPM++
network at sampling batch 1024, bf16 autocast as on the fast path: milliseconds per call and the error of each
against a float64 reference (inputs with channel means 0-4 standard deviations off zero).

    python benchmarks/perf/eager_groupnorm.py --out eager_groupnorm.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.timing import timed_windows
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.nets.unet import GroupNorm

SHAPES = [(1024, c, r) for r in (32, 16, 8) for c in (256, 512)]


def measure(n: int, c: int, r: int, dev: torch.device) -> dict:
    torch.manual_seed(0)
    norm = GroupNorm(c).to(dev)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2)
        norm.bias.normal_(0, 0.2)
    offsets = torch.rand(1, c, 1, 1, device=dev) * 4
    x = (torch.randn(n, c, r, r, device=dev) + offsets).bfloat16().to(memory_format=torch.channels_last)
    ref = F.group_norm(x.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)

    def native() -> torch.Tensor:
        y = F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)
        return y.to(x.dtype)

    def per_channel() -> torch.Tensor:
        return norm(x)

    row: dict = {"shape": [n, c, r, r]}
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        for name, fn in (("native", native), ("per_channel", per_channel)):
            y = fn()
            err = (y.double() - ref).abs()
            row[name] = {"ms": timed_windows(fn, dev, 3, 10, 5) * 1000, "max_abs_err": float(err.max()),
                         "rms_err": float(err.square().mean().sqrt()),
                         "channels_last_out": y.is_contiguous(memory_format=torch.channels_last)}
    row["speedup"] = row["native"]["ms"] / row["per_channel"]["ms"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    dev = torch.device("cuda")
    rows = []
    for n, c, r in SHAPES:
        rows.append(measure(n, c, r, dev))
        print(rows[-1], flush=True)
    atomic_write_json(args.out, {**provenance(dev), "rows": rows})


if __name__ == "__main__":
    main()
