"""Does the digits evaluation separate a good model from a half-trained and a memorising one (issue 3's target)?

* good: a trained EDM model (``benchmarks/digits32/study_gpu.sh``'s ddpmpp-small, 319 kimg), 1,000 samples
  (ipndm, 8 NFE, seeds 0-999: FD 76 on the GPU with heun 35 giving 77, so it is a fair proxy for the model);
* memoriser: 1,000 images drawn with replacement from the training split itself, i.e. perfect copies;
* half-trained: the FD curves of the same study (FD at 80 kimg against the final FD, two seeds), read from
  ``benchmarks/fdm_training/edm*.json``.

For each sample set: FD-digits against the test split and the memorisation check (nearest-neighbour distance to the
training set of generated vs held-out images, pixels and classifier features). The model-to-model spread is the
difference between the two seeds of the same configuration at the same kimg.

    python benchmarks/metrics/separation.py MODEL.safetensors --out benchmarks/metrics/separation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.data import load_dataset
from fastdiffusion.metrics.digits_classifier import digits_features, fd_digits
from fastdiffusion.metrics.quality import memorization
from fastdiffusion.models import load_model
from fastdiffusion.sampling import generate

HERE = Path(__file__).resolve().parent


def check(x: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> dict:
    return {"fd_digits": fd_digits(x),
            "memorization_pixels": memorization(x, train, test),
            "memorization_features": memorization(digits_features(x), digits_features(train), digits_features(test))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    train, test = load_dataset("digits32", split="train").x, load_dataset("digits32", split="test").x
    good = generate(load_model(args.model), list(range(args.n)), sampler="ipndm", nfe=8, batch=250)
    copies = train[torch.randint(len(train), (args.n,), generator=torch.Generator().manual_seed(0))]
    curves = {}
    for name in ("edm", "edm-s1"):
        curve = json.loads((HERE.parent / "fdm_training" / f"{name}.json").read_text())["curve"]
        curves[name] = {"fd_at_80kimg": curve[0]["fd"], "final": {"kimg": curve[-1]["kimg"], "fd": curve[-1]["fd"]},
                        "fd_at_240kimg": next(c["fd"] for c in curve if round(c["kimg"]) == 240)}
    result = {**provenance(), "good_model": {"file": args.model, "sampler": "ipndm", "nfe": 8, "n": args.n,
                                             **check(good, train, test)},
              "memoriser_train_copies": {"n": args.n, **check(copies, train, test)},
              "half_trained_curves": curves,
              "seed_spread_at_240kimg": abs(curves["edm"]["fd_at_240kimg"] - curves["edm-s1"]["fd_at_240kimg"])}
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
