"""The tuning reference on a trained model: how close 127-call solves come to a Heun-511 endpoint of the same noise.

``fit_schedule`` fits a sampler's grid to a reference solve of the model's own PF-ODE, so the reference's error is
the floor of any fit. Mean per-sample endpoint RMS to Heun with 511 calls on the Karras grid, 16 seeds. Usage (the
CPU demo model: ``fastdiffusion train --preset demo``):
    python benchmarks/samplers_trained/reference_cpu.py RUN --out benchmarks/samplers_trained/reference_cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.models import load_model
from fastdiffusion.sampling import generate


def endpoint_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``mean_n sqrt(mean_d (x_n - ref_n)^2)``: the per-sample RMS averaged over samples."""
    return float((x - ref).float().reshape(len(x), -1).square().mean(1).sqrt().mean())


CANDIDATES = [("heun", "karras"), ("unipc", "logsnr"), ("unipc", "karras"), ("dpmpp-2m", "logsnr")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1")
    p.add_argument("--nfe", type=int, default=127)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    seeds, device = list(range(args.seeds)), torch.device("cpu")

    def run(sampler: str, schedule: str, nfe: int) -> torch.Tensor:
        return generate(model, seeds, batch=len(seeds), device=device, progress=False, sampler=sampler, nfe=nfe,
                        schedule=schedule)

    target = run("heun", "karras", 511)
    rows = [{"sampler": s, "schedule": g, "nfe": args.nfe, "error_to_heun511": endpoint_error(run(s, g, args.nfe),
                                                                                             target)}
            for s, g in CANDIDATES]
    for r in rows:
        print(f"{r['sampler']:>9} {r['schedule']:<7} {r['nfe']}: {r['error_to_heun511']:.3g}")
    config = json.loads((Path(args.model) / "config.json").read_text())
    atomic_write_json(args.out, {**provenance(device), "model": args.model, "model_config": config,
                                 "seeds": f"0-{args.seeds - 1}", "target": "heun 511 NFE, karras grid",
                                 "metric": "mean over samples of the per-sample endpoint RMS", "rows": rows})


if __name__ == "__main__":
    main()
