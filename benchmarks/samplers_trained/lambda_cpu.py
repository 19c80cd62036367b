"""lambda-DDIM on a trained model: the removed mixture-tuned default lambda against lambda = 0 (DDIM, the default now).

RMS to the Heun-35 endpoint of the same seeds and high-frequency energy over Heun-35's (``bench.model_samplers``), on
Karras and log-SNR grids at NFE 4, 6, 10. Usage (the CPU demo model: ``fastdiffusion train --preset demo``):
    python benchmarks/samplers_trained/lambda_cpu.py RUN --out benchmarks/samplers_trained/lambda_cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.metrics.sharpness import hf_energy
from fastdiffusion.models import load_model
from fastdiffusion.sampling import generate

# lambda-DDIM's per-NFE default until session 7, tuned on exact-score mixtures (LAMBDA_BY_NFE of samplers/conjugate.py)
MIXTURE_LAMBDA = {4: -0.006, 6: -0.011, 10: -0.012}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--seeds", type=int, default=256, help="seeds 0..N-1")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    seeds = list(range(args.seeds))
    device = torch.device("cpu")
    ref = generate(model, seeds, batch=len(seeds), device=device, progress=False, sampler="heun", nfe=35)
    ref_hf = hf_energy(ref)
    rows = []
    for nfe, lam_mix in MIXTURE_LAMBDA.items():
        for schedule in ("karras", "logsnr"):
            for label, lam in (("mixture-tuned", lam_mix), ("zero", 0.0)):
                x = generate(model, seeds, batch=len(seeds), device=device, progress=False, sampler="lambda-ddim",
                             nfe=nfe, schedule=schedule, lam=lam)
                rows.append({"nfe": nfe, "schedule": schedule, "lambda": label, "lam": lam,
                             "rms_to_heun35": float((x - ref).square().mean().sqrt()),
                             "hf_ratio": hf_energy(x) / ref_hf})
                print(rows[-1], flush=True)
    config = json.loads((Path(args.model) / "config.json").read_text())
    atomic_write_json(args.out, {**provenance(device), "model": args.model, "model_config": config,
                                 "seeds": f"0-{args.seeds - 1}", "reference": "heun 35", "results": rows})


if __name__ == "__main__":
    main()
