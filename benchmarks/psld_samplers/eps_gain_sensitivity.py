"""How PSLD's probability-flow ODE answers errors in ε: the exact ε of a 64-D Gaussian mixture (``benchmark64``) with
a perturbation, sampled from the prior by psld-conj (lam = 0) at 20 and 200 calls; the samples' spread against the
unperturbed run's. Perturbations: a smooth bounded error ``s tanh(W z)``, a gain ``(1 + g)`` on all of ε, and a gain
on a random subspace (a fraction of the 2D directions), which is how a network that under-fits part of ε errs.
Usage (CPU, under a minute):
    python benchmarks/psld_samplers/eps_gain_sensitivity.py --out benchmarks/psld_samplers/eps_gain_sensitivity.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import fastdiffusion as fd
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.psld_exact import PSLDMixtureEps
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.processes.psld import PSLD

NFES = (20, 200)


class Perturbed:
    """The exact ε plus ``error(ε, z)``, knowing its process like a model."""

    def __init__(self, exact: PSLDMixtureEps, error: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.exact, self.error, self.process = exact, error, exact.process

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        e = self.exact(z, t)
        return e + self.error(e.double(), z.double()).to(e.dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="prior draws")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    mixture = GaussianMixture.benchmark64()
    exact = PSLDMixtureEps(mixture, PSLD())
    d2 = 2 * mixture.dim
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d2, d2, generator=gen, dtype=torch.float64) / math.sqrt(d2)
    q = torch.linalg.qr(torch.randn(d2, d2, generator=gen, dtype=torch.float64))[0]
    noise = torch.randn(args.n, mixture.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    momentum = torch.randn(args.n, mixture.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    projectors = {frac: q[:, :int(frac * d2)] @ q[:, :int(frac * d2)].T for frac in (0.1, 0.5)}
    cases: list[tuple[str, Callable[[Tensor, Tensor], Tensor]]] = [("exact", lambda e, z: torch.zeros_like(e))]
    cases += [(f"smooth error {s}", lambda e, z, s=s: s * torch.tanh(z @ w.T)) for s in (0.025, 0.1)]
    cases += [(f"gain {1 + g:g}", lambda e, z, g=g: g * e) for g in (-0.03, 0.03)]
    cases += [(f"gain {1 + g:g} on {frac:.0%} of directions", lambda e, z, g=g, pr=pr: g * (e @ pr))
              for frac, pr in projectors.items() for g in (-0.5, -0.2, 0.5)]
    rows = []
    for label, error in cases:
        for nfe in NFES:
            x = fd.sample(Perturbed(exact, error), noise, sampler="psld-conj", nfe=nfe, lam=0.0,
                          process=exact.process, noise_fn=lambda like: momentum)
            rows.append({"perturbation": label, "nfe": nfe, "std": float(x.std()), "abs_max": float(x.abs().max())})
            print(f"{label:32s} NFE {nfe:3d}: std {rows[-1]['std']:.3f}, max |x| {rows[-1]['abs_max']:.2f}")
    atomic_write_json(args.out, {**provenance("cpu"), "problem": f"{mixture!r}, PSLD() (constant beta)",
                                 "sampler": "psld-conj, lam = 0, quadratic grid", "draws": args.n,
                                 "data_std": float(mixture.sample(4096, torch.Generator().manual_seed(3)).std()),
                                 "results": rows})


if __name__ == "__main__":
    main()
