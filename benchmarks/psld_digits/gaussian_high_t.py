"""Diagnostic for a trained PSLD model whose PF-ODE diverges (``pf_ode_stability.py``): its ε replaced above a time
t_c by the exact ε of per-pixel Gaussian data (each pixel N(mean, var) of the training set, independent), which needs
no network. Reports the samples' spread for deterministic samplers from the prior per t_c, and the RMS error of both
ε against the training target on perturbed training images at high t. Usage (CPU, about two minutes):
    python benchmarks/psld_digits/gaussian_high_t.py RUN --out benchmarks/psld_digits/gaussian_high_t.json
"""

from __future__ import annotations

import torch
from torch import Tensor
from trained_run import load_trained_run

import fastdiffusion as fd
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.psld_exact import PSLDMixtureEps
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data.gmm import GaussianMixture

T_CS = (None, 0.8, 0.65, 0.5)  # None: the network everywhere
RUNS = (("psld-conj", 200), ("csps-d", 100), ("psld-conj", 20))


def main() -> None:
    args, model, data, x = load_trained_run(__doc__)
    torch.manual_seed(0)  # the prior's momentum and the perturbations' noise
    proc = model.process
    # Per-pixel Gaussian data: a one-component mixture with the training set's per-pixel mean and variance.
    gaussian = PSLDMixtureEps(GaussianMixture(means=x.mean(0).reshape(1, -1), variances=x.var(0).reshape(1, -1),
                                              weights=[1.0]), proc)

    def hybrid(t_c: float | None):
        class Eps:
            process = proc

            def __call__(self, z: Tensor, t: Tensor) -> Tensor:
                s = float(torch.as_tensor(t).reshape(-1)[0])
                return gaussian(z, t).to(z.dtype) if t_c is not None and s > t_c else model(z, t)

        return Eps()

    noise = torch.randn(args.n, *model.data_shape, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        for t_c in T_CS:
            for sampler, nfe in RUNS:
                out = fd.sample(hybrid(t_c), noise, sampler=sampler, nfe=nfe, process=proc, lam=0.0)
                rows.append({"t_c": t_c, "sampler": sampler, "nfe": nfe, "lam": 0.0, "std": float(out.std()),
                             "abs_max": float(out.abs().max())})
                print(rows[-1], flush=True)
        x0 = x[: args.n]
        errors = []
        for t0 in (1.0, 0.8, 0.65, 0.5):
            t = torch.full((x0.shape[0],), t0, dtype=torch.float64)
            z, target = proc.perturb(x0, t, torch.randn(x0.shape[0], 2 * x0.shape[1], *x0.shape[2:],
                                                        dtype=torch.float64))
            net = model(z.float(), torch.tensor(t0, dtype=torch.float64)).double()
            errors.append({"t": t0, "network_rms_error": float((net - target).square().mean().sqrt()),
                           "gaussian_rms_error": float((gaussian(z, torch.tensor(t0, dtype=torch.float64))
                                                        .double() - target).square().mean().sqrt())})
            print(errors[-1], flush=True)
    atomic_write_json(args.out, {**provenance("cpu"), "model": str(args.model), "data": data,
                                 "data_std": float(x.std()), "draws": args.n, "samples": rows, "eps_error": errors})


if __name__ == "__main__":
    main()
