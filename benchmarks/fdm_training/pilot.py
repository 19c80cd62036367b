"""FDM vs its baseline on 32-px digits (pilot of issue 3): one process per GPU trains one process type with identical
network, data (train split), batch, optimiser and seed; FD-digits against the held-out test split every
``--eval-every`` steps with the same deterministic sampler (heun, 35 NFE, EMA weights, seeds 0..n-1), then FD vs NFE
for the final model. Results are rewritten atomically after every evaluation, so a time-out keeps what was measured.

    CUDA_VISIBLE_DEVICES=0 python benchmarks/fdm_training/pilot.py --process edm --out results/edm.json &
    CUDA_VISIBLE_DEVICES=1 python benchmarks/fdm_training/pilot.py --process fdm-edm --out results/fdm-edm.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.sampling import generate
from fastdiffusion.training import TrainConfig, Trainer


def samples(trainer: Trainer, n: int, sampler: str, nfe: int) -> torch.Tensor:
    with torch.autocast(trainer.dist.device.type, torch.bfloat16, enabled=trainer.bf16):
        return generate(trainer.ema.model, list(range(n)), batch=1000, device=trainer.dist.device, sampler=sampler,
                        nfe=nfe, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--process", required=True)
    p.add_argument("--net", default="ddpmpp-small")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    cfg = TrainConfig(run_dir=tempfile.mkdtemp(), data="digits32", data_split="train", process=args.process,
                      net=args.net, batch=args.batch, lr=args.lr, lr_warmup=200, steps=args.steps, seed=args.seed,
                      ema_halflife_kimg=50.0, compile=False, channels_last=False)
    trainer = Trainer(cfg, quiet=True)
    result = {**provenance(), "config": cfg.to_json(),
              "protocol": {"metric": "FD-digits (64-d classifier features)", "reference": "digits32 test split (360)",
                           "n_generated": args.n_eval, "sampler": "heun", "nfe": 35, "weights": "EMA",
                           "seeds": f"0-{args.n_eval - 1}"}, "curve": [], "fd_vs_nfe": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    while trainer.step < args.steps:
        for _ in range(args.eval_every):
            trainer.train_step()
        fd = fd_digits(samples(trainer, args.n_eval, "heun", 35))
        result["curve"].append({"step": trainer.step, "kimg": trainer.step * args.batch / 1000, "fd": fd,
                                "wall_s": time.time() - t0})
        print(args.process, result["curve"][-1], flush=True)
        atomic_write_json(args.out, result)
    for sampler, nfes in (("heun", (5, 7, 9, 13, 19, 35)), ("dpmpp-2m", (4, 6, 8, 10, 15, 20))):
        for nfe in nfes:
            fd = fd_digits(samples(trainer, args.n_eval, sampler, nfe))
            result["fd_vs_nfe"].append({"sampler": sampler, "nfe": nfe, "fd": fd})
            atomic_write_json(args.out, result)
    print(args.process, "fd_vs_nfe", result["fd_vs_nfe"], flush=True)


if __name__ == "__main__":
    main()
