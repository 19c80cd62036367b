"""Sanity numbers for FD on the bundled digits (the digits classifier's 64-d features), for the metrics note.

    python scripts/fd_sanity.py [--out benchmarks/metrics/fd_sanity.json] [--seeds 20]

Measures, all against the held-out TEST split (360 images) unless said otherwise:
    train_vs_test          FD(TRAIN split, 1437 images)
    test_vs_itself         FD(TEST, TEST) (0 by construction)
    test_halves            FD(one random half of TEST, the other half), 180 vs 180, over `seeds` random splits
    noise                  FD(TRAIN + σ ε clamped to [−1, 1]) for increasing σ (one noise draw, seed 0)
    subsample_spread       FD of n = 1000 images drawn without replacement from TRAIN, over `seeds` seeds
                           (mean, std, min, max): the seed-to-seed spread when the distribution does not change
    bootstrap_spread       the same with n = 1000 drawn with replacement from TRAIN
    n_dependence           FD(first-n-of-a-permutation of TRAIN) for several n: FD's finite-sample bias
    prdc_train             precision / recall / density / coverage of TRAIN against TEST (k = 3)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data import load_dataset
from fastdiffusion.metrics.digits_classifier import FEATURE_NETWORK, classifier_info, digits_features
from fastdiffusion.metrics.frechet import FeatureStats
from fastdiffusion.metrics.quality import prdc


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values), "min": min(values),
            "max": max(values), "n_seeds": len(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/metrics/fd_sanity.json"))
    p.add_argument("--seeds", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    tr, te = (load_dataset("digits32", split=s).x for s in ("train", "test"))
    f_tr, f_te = digits_features(tr), digits_features(te)
    ref = FeatureStats().update(f_te).stats()

    def fd_feats(f: torch.Tensor, against=ref) -> float:
        return FeatureStats().update(f).stats().frechet_distance(against)

    halves = []
    for seed in range(args.seeds):
        perm = torch.randperm(len(te), generator=torch.Generator().manual_seed(seed))
        half_b = FeatureStats().update(f_te[perm[180:]]).stats()
        halves.append(fd_feats(f_te[perm[:180]], half_b))
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(tr.shape, generator=g)
    noise = {str(s): fd_feats(digits_features((tr + s * eps).clamp(-1, 1))) for s in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)}
    sub, boot = [], []
    for seed in range(args.seeds):
        gs = torch.Generator().manual_seed(seed)
        sub.append(fd_feats(f_tr[torch.randperm(len(tr), generator=gs)[:1000]]))
        boot.append(fd_feats(f_tr[torch.randint(len(tr), (1000,), generator=gs)]))
    perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))
    n_dep = {str(n): fd_feats(f_tr[perm[:n]]) for n in (100, 250, 500, 1000, len(tr))}
    info = classifier_info()
    result = {
        **provenance("cpu"),
        "command": "python scripts/fd_sanity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "feature_network": FEATURE_NETWORK,
        "feature_network_sha256": info["sha256"],
        "feature_network_test_accuracy": info["test_accuracy"],
        "reference": "digits32@test (360 images)",
        "results": {
            "train_vs_test": fd_feats(f_tr),
            "test_vs_itself": fd_feats(f_te),
            "test_halves": spread(halves),
            "noise_on_train": noise,
            "subsample_spread_n1000": spread(sub),
            "bootstrap_spread_n1000": spread(boot),
            "n_dependence": n_dep,
            "prdc_train": prdc(f_te, f_tr, k=3),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(json.dumps(result["results"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
