"""Issue 20: how much one noise level of a fixed 4- or 5-call grid moves FD-digits on a trained model (dpmpp-2m).

The log-SNR and Karras grids, and each with one level moved, on 1,000 seeds (100000-100999) of the model, FD-digits
against the digits test split at the model's resolution. Usage (the CPU demo model: ``fastdiffusion train --preset
demo``, about 2 minutes on 2 threads):
    python benchmarks/samplers_trained/grid_sensitivity.py RUN \
        --out benchmarks/samplers_trained/cpu_demo/grid_sensitivity.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastdiffusion.bench.model_samplers import EVAL_SEEDS
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.models import load_model
from fastdiffusion.samplers import make_sigmas
from fastdiffusion.sampling import generate, sampling_range
from fastdiffusion.seeds import parse_seeds

SAMPLER = "dpmpp-2m"
# (schedule, calls, index of the level moved, its new value): None keeps the grid as it is
CASES = [("logsnr", 4, None, None), ("logsnr", 4, 1, 5.0), ("logsnr", 4, 1, 1.0),
         ("logsnr", 5, None, None), ("logsnr", 5, 2, 1.2), ("karras", 5, None, None), ("karras", 5, 2, 1.0),
         ("karras", 5, 2, 0.5)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    lo, hi = sampling_range(model)
    seeds = parse_seeds(EVAL_SEEDS)
    rows = []
    with torch.no_grad():
        for schedule, nfe, index, level in CASES:
            sigmas = make_sigmas(schedule, nfe, lo, hi)
            if index is not None:
                sigmas[index] = level
            x = generate(model, seeds, batch=500, sampler=SAMPLER, nfe=nfe, sigmas=sigmas, progress=False)
            rows.append({"schedule": schedule, "nfe": nfe, "moved_level": index, "sigmas": sigmas.tolist(),
                         "fd_digits": fd_digits(x, "test")})
            print(f"{schedule} NFE {nfe} {[round(s, 3) for s in sigmas.tolist()]}: FD {rows[-1]['fd_digits']:.1f}",
                  flush=True)
    atomic_write_json(args.out, {"protocol": {"model": args.model, "sampler": SAMPLER, "eval_seeds": EVAL_SEEDS,
                                              "fd": "FD-digits vs the digits test split at the model's resolution",
                                              **provenance(torch.device("cpu"))}, "results": rows})


if __name__ == "__main__":
    main()
