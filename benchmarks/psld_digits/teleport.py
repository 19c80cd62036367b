"""PSLD's teleport on a trained model whose PF-ODE diverges (``pf_ode_stability.py``): FD-digits of the deterministic
PSLD samplers from the prior and teleported to t_T by the exact flow of Gaussian data (the run's training-set mean and
covariance, ``data.stats``), against the family's default SSCS 100. 1,000 samples (seeds 100000-100999) per row,
each with its spread, largest |x| and high-frequency energy. Writes the JSON after every row. Runs on the GPU where
there is one. Usage (CPU, ~25 min; --quick: SSCS 100 and the deterministic samplers at NFE 10 and 20 from the prior
and from t = 0.3, ~7 min):
    python benchmarks/psld_digits/teleport.py RUN --out benchmarks/psld_digits/teleport.json [--quick]
"""

from __future__ import annotations

import time

import torch
from trained_run import load_trained_run

import fastdiffusion as fd
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data import load_dataset
from fastdiffusion.data.stats import resolve_data_stats
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.metrics.sharpness import hf_energy

SEEDS = list(range(100000, 101000))
TELEPORTS = (None, 0.65, 0.5, 0.3)
# (sampler, NFE, teleports): the family default, the deterministic samplers, the analytic first step, and the
# Gaussian alone (teleport to t = 0.01, one call)
RUNS = ([("sscs", 100, (None, 0.5))]
        + [(s, n, TELEPORTS) for s in ("psld-conj", "csps-d") for n in (10, 20, 50)]
        + [("psld-conj", 1, (0.01,))])
QUICK_RUNS = [("sscs", 100, (None,))] + [(s, n, (None, 0.3)) for s in ("psld-conj", "csps-d") for n in (10, 20)]


def main() -> None:
    args, model, data, _ = load_trained_run(__doc__, lambda p: p.add_argument("--quick", action="store_true"))
    stats = resolve_data_stats(args.model, None, model.data_shape)
    test = load_dataset(data, split="test").x
    device = next(model.parameters()).device
    result = {**provenance(device), "model": str(args.model), "data": data, "samples": len(SEEDS),
              "seeds": f"{SEEDS[0]}-{SEEDS[-1]}", "data_stats": stats.describe(),
              "test_split": {"std": float(test.std()), "hf_energy": hf_energy(test.float())}, "rows": []}
    with torch.no_grad():
        for sampler, nfe, teleports in QUICK_RUNS if args.quick else RUNS:
            for teleport in teleports:
                t0 = time.perf_counter()
                shortcut = {} if teleport is None else {"teleport": teleport, "data_stats": stats}
                x = fd.generate(model, SEEDS, batch=250, sampler=sampler, nfe=nfe, progress=False, device=device,
                                **shortcut).cpu()
                row = {"sampler": sampler, "nfe": nfe, "teleport": teleport, "fd_digits": fd_digits(x, "test"),
                       "std": float(x.std()), "abs_max": float(x.abs().max()), "hf_energy": hf_energy(x),
                       "seconds": time.perf_counter() - t0}
                result["rows"].append(row)
                print(row, flush=True)
                atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
