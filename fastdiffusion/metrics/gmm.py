"""Metrics for data with a known density: an exact Gaussian mixture p (`fastdiffusion.data.GaussianMixture`).

What is computed, for generated samples x_1..x_M ~ q (the model) and the true mixture p:

    nll        = −1/M Σ_j log p(x_j)          exact log-density, nats per sample (also per dimension: / D)
               = an estimate of the cross-entropy E_q[−log p] = H(q) + KL(q‖p)
    data_nll   = −1/R Σ_i log p(y_i),  y_i ~ p fresh   (Monte Carlo estimate of the entropy H(p); its
                 standard error is reported)
    nll_gap    = nll − data_nll

KL(q‖p) itself needs log q, which a sampler does not give, so it is NOT reported. The cross-entropy rewards
samples that sit in high-density regions: a model that collapses onto the modes can score nll < data_nll. So it is
paired with a distance that sees missing mass:

    sliced_w2          = SW₂(x, y)  with y ~ p fresh (R samples; `sliced.sliced_wasserstein`)
    sliced_w2_floor    = SW₂(y', y) with y' ~ p another fresh draw of M samples: the value a perfect sampler gets
                         at these sample sizes (finite-sample noise floor)

All random draws come from CPU generators seeded with `seed` (fresh reference), `seed + 1` (floor set) and
`seed + 2` (projection directions).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.gmm import GaussianMixture
from ..errors import UserError
from .sliced import sliced_wasserstein

__all__ = ["gmm_metrics", "gmm_nll"]


def gmm_nll(samples: Tensor, mixture: GaussianMixture) -> tuple[float, float]:
    """(−mean log p(x_j), its standard error) for samples (M, ...) with D values per row, float64."""
    if samples.shape[0] < 1:
        raise UserError("gmm-nll: no samples")
    lp = mixture.log_prob(samples.detach().reshape(samples.shape[0], -1).to(torch.float64).cpu())
    if not torch.isfinite(lp).all():
        raise UserError("gmm-nll: some samples have zero density or are not finite")
    se = float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else float("nan")
    return float(-lp.mean()), se


def gmm_metrics(
    samples: Tensor, mixture: GaussianMixture, n_reference: int = 10_000, seed: int = 0, n_projections: int = 256
) -> dict[str, float | int]:
    """nll, data_nll, nll_gap, sliced_w2 and sliced_w2_floor of `samples` under `mixture` (module docstring)."""
    x = samples.detach().reshape(samples.shape[0], -1).to(torch.float64).cpu()
    if x.shape[1] != mixture.dim:
        raise UserError(f"gmm-nll: samples have {x.shape[1]} values each, the mixture is {mixture.dim}-d")
    ref = mixture.sample(n_reference, torch.Generator().manual_seed(seed))
    floor_set = mixture.sample(x.shape[0], torch.Generator().manual_seed(seed + 1))
    nll, nll_se = gmm_nll(x, mixture)
    data_nll, data_se = gmm_nll(ref, mixture)
    return {
        "nll": nll,
        "nll_stderr": nll_se,
        "nll_per_dim": nll / mixture.dim,
        "data_nll": data_nll,
        "data_nll_stderr": data_se,
        "nll_gap": nll - data_nll,
        "sliced_w2": sliced_wasserstein(x, ref, n_projections, torch.Generator().manual_seed(seed + 2)),
        "sliced_w2_floor": sliced_wasserstein(floor_set, ref, n_projections, torch.Generator().manual_seed(seed + 2)),
        "n_reference": n_reference,
        "n_projections": n_projections,
        "seed": seed,
    }
