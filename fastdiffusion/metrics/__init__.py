"""Metrics: FID (standard Inception, local weights), FD on bundled-digits features, precision / recall / density /
coverage, memorisation, sliced Wasserstein, exact-GMM likelihood, and `evaluate`, which runs them with protocols.

    from fastdiffusion.metrics import evaluate
    report = evaluate("runs/demo", metrics="fd-digits,prdc,memorization", n=1000, sampler="heun", nfe=35)
"""

from .digits_classifier import fd_digits
from .evaluate import METRICS, evaluate
from .frechet import FeatureStats, GaussianStats, frechet_distance
from .gmm import gmm_metrics
from .quality import memorization, prdc
from .sliced import sliced_wasserstein

__all__ = [
    "METRICS",
    "FeatureStats",
    "GaussianStats",
    "evaluate",
    "fd_digits",
    "frechet_distance",
    "gmm_metrics",
    "memorization",
    "prdc",
    "sliced_wasserstein",
]
