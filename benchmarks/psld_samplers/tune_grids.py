"""PSLD time grids fitted per model (``fastdiffusion tune``'s PSLD path) on an exact-score mixture, against the fixed
quadratic and time-uniform grids: endpoint RMS on fresh prior draws (x and momentum) against the exact PF-ODE
endpoints (DOP853), with tuning draws disjoint from them. Usage (CPU, about a minute):
    python benchmarks/psld_samplers/tune_grids.py --out benchmarks/psld_samplers/tune_grids.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import fastdiffusion as fd
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.psld_exact import PSLDMixtureEps, exact_endpoint
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.processes.psld import PSLD
from fastdiffusion.samplers.tuning import fit_schedule, prior_noise, reference_description, reference_solve

RUNS = (("psld-conj", 6), ("psld-conj", 10), ("csps-d", 5), ("csps-d", 10), ("rvv", 6), ("rvv", 10))
FIXED = ("quadratic", "time-uniform")


def draws(seed: int, n: int, dim: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tuning", type=int, default=64, help="tuning draws")
    p.add_argument("--fresh", type=int, default=256, help="evaluation draws")
    p.add_argument("--max-evals", type=int, default=120)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    mixture = GaussianMixture.random(2, 4, seed=3, spread=0.8, component_std=0.4)
    eps = PSLDMixtureEps(mixture, PSLD())
    proc = eps.process
    start = torch.tensor(proc.T)
    z = draws(11, args.tuning, mixture.dim)
    ref = reference_solve(eps, z, process=proc)
    ref_exact, _ = exact_endpoint(eps, proc.prior(z, start, prior_noise(z)), rtol=1e-10)
    fresh, momentum = draws(12, args.fresh, mixture.dim), draws(13, args.fresh, mixture.dim)
    exact, _ = exact_endpoint(eps, proc.prior(fresh, start, lambda like: momentum), rtol=1e-10)
    rows = []
    for sampler, nfe in RUNS:
        tuned = fit_schedule(eps, sampler=sampler, nfe=nfe, noise=z, reference=ref, process=proc,
                             max_evals=args.max_evals)

        def error(grid: dict, sampler: str = sampler, nfe: int = nfe) -> float:
            out = fd.sample(eps, fresh, sampler=sampler, nfe=nfe, process=proc, noise_fn=lambda like: momentum,
                            **grid)
            return rms(out, exact)

        row = {"sampler": sampler, "nfe": nfe, "fitted": error({"sigmas": tuned.sigmas}),
               **{name: error({"schedule": name}) for name in FIXED}, "times": tuned.sigmas.tolist(),
               "tuning_value": tuned.value, "tuning_start": tuned.start}
        rows.append(row)
        print(f"{sampler} NFE {nfe}: fitted {row['fitted']:.4g}, "
              + ", ".join(f"{name} {row[name]:.4g}" for name in FIXED), flush=True)
    atomic_write_json(args.out, {
        **provenance("cpu"),
        "problem": f"{mixture!r}, PSLD() (constant beta)",
        "reference": reference_description("psld"), "reference_rms_to_exact": rms(ref.endpoint, ref_exact),
        "data_rms": float(ref_exact.square().mean().sqrt()),
        "protocol": {"tuning_draws": args.tuning, "tuning_seeds": "x 11, momentum tuning.PRIOR_SEED",
                     "evaluation_draws": args.fresh, "evaluation_seeds": "x 12, momentum 13",
                     "max_evals": args.max_evals, "metric": "endpoint RMS to the exact PF-ODE endpoint"},
        "results": rows})


if __name__ == "__main__":
    main()
