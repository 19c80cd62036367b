"""Train one model on 32-px digits and measure it the way every digits study of this repository does.

One process trains one configuration (process, network, options, seed) on the digits32 *train* split and evaluates
FD-digits (64-d features of the bundled digits classifier) of ``--n-eval`` EMA samples against the held-out *test*
split every ``--eval-every-kimg`` training images, with one fixed deterministic sampler (``--eval-sampler`` at
``--eval-nfe``, seeds 0..n-1). Training stops at ``--steps`` or at ``--deadline-s`` seconds after start, whichever
comes first; then the final EMA model is swept over ``--sweep`` samplers and NFEs and optionally saved (``--save``,
weights in fp16 so a 7M-parameter model stays under 16 MB). The results JSON (provenance, config, protocol, the FD
curve with wall-clock and training loss, the sweep) is rewritten atomically after every evaluation, so a time-out
keeps what was measured.

Used by ``benchmarks/fdm_training`` (FDM vs baseline), ``benchmarks/psld_digits`` and ``benchmarks/cunet``:

    CUDA_VISIBLE_DEVICES=0 python benchmarks/digits32/train_eval.py --process fdm-edm --out res/fdm-edm.json \\
        --sweep "heun:5,7,9,13,19,35;dpmpp-2m:4,6,8,10,15,20"
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import META_KEY, atomic_write_bytes, atomic_write_json, state_dict_cpu
from fastdiffusion.cli_args import parse_kv
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.models import model_meta
from fastdiffusion.sampling import generate
from fastdiffusion.training import TrainConfig, Trainer


def parse_sweep(text: str) -> list[tuple[str, int]]:
    """``"heun:5,7;dpmpp-2m:4,6"`` -> [("heun", 5), ("heun", 7), ("dpmpp-2m", 4), ("dpmpp-2m", 6)]."""
    out = []
    for part in filter(None, text.split(";")):
        name, _, nfes = part.partition(":")
        out += [(name.strip(), int(n)) for n in nfes.split(",")]
    return out


def ema_samples(trainer: Trainer, n: int, sampler: str, nfe: int) -> torch.Tensor:
    """EMA samples for seeds 0..n-1 (bf16 network, fp32 sampler state on CUDA)."""
    with torch.autocast(trainer.dist.device.type, torch.bfloat16, enabled=trainer.bf16):
        return generate(trainer.ema.model, list(range(n)), batch=1000, device=trainer.dist.device, sampler=sampler,
                        nfe=nfe, progress=False)


def save_fp16(trainer: Trainer, path: Path) -> None:
    """The EMA model as one self-contained model file with fp16 weights (``load_model`` casts them back)."""
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state_dict_cpu(trainer.ema.model.net).items()}
    atomic_write_bytes(path, save(weights, metadata={META_KEY: json.dumps(model_meta(trainer.ema.model))}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--process", required=True)
    p.add_argument("--process-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--net", default="ddpmpp-small")
    p.add_argument("--net-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", default="digits32")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-warmup", type=int, default=200)
    p.add_argument("--ema-halflife-kimg", type=float, default=50.0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", type=int, choices=(0, 1), default=0)
    p.add_argument("--channels-last", type=int, choices=(0, 1), default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--deadline-s", type=float, default=float("inf"), help="stop training this long after start")
    p.add_argument("--eval-every-kimg", type=float, default=100.0)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--eval-sampler", default="heun")
    p.add_argument("--eval-nfe", type=int, default=35)
    p.add_argument("--sweep", default="", help='final-model sweep, e.g. "heun:5,9,35;dpmpp-2m:4,8"')
    p.add_argument("--sweep-deadline-s", type=float, default=float("inf"), help="skip sweep points after this")
    p.add_argument("--save", type=Path, help="write the final EMA model here (fp16 weights)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    t0 = time.time()
    cfg = TrainConfig(run_dir=tempfile.mkdtemp(), data=args.data, data_split="train", process=args.process,
                      process_options=parse_kv(args.process_opt, "--process-opt"), net=args.net,
                      net_options=parse_kv(args.net_opt, "--net-opt"), batch=args.batch, lr=args.lr,
                      lr_warmup=args.lr_warmup, steps=args.steps, seed=args.seed,
                      ema_halflife_kimg=args.ema_halflife_kimg, precision=args.precision,
                      compile=bool(args.compile), channels_last=bool(args.channels_last))
    trainer = Trainer(cfg, quiet=True)
    result = {**provenance(), "config": cfg.to_json(),
              "parameters": sum(q.numel() for q in trainer.model.net.parameters()),
              "protocol": {"metric": "FD-digits (64-d classifier features)", "reference": "digits32 test split (360)",
                           "training_data": "digits32 train split (1437)", "n_generated": args.n_eval,
                           "sampler": args.eval_sampler, "nfe": args.eval_nfe, "weights": "EMA",
                           "seeds": f"0-{args.n_eval - 1}"},
              "curve": [], "sweep": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    every = max(1, round(args.eval_every_kimg * 1000 / args.batch))
    loss_sum, n_loss, train_s = torch.zeros((), device=trainer.dist.device), 0, 0.0
    while trainer.step < args.steps and time.time() - t0 < args.deadline_s:
        t1 = time.time()
        for _ in range(min(every, args.steps - trainer.step)):
            loss, _ = trainer.train_step()
            loss_sum += loss
            n_loss += 1
        if trainer.dist.device.type == "cuda":  # the step's kernels are queued: wait before reading the clock
            torch.cuda.synchronize()
        train_s += time.time() - t1
        fd = fd_digits(ema_samples(trainer, args.n_eval, args.eval_sampler, args.eval_nfe))
        result["curve"].append({"step": trainer.step, "kimg": trainer.step * args.batch / 1000, "fd": fd,
                                "loss": float(loss_sum) / n_loss, "train_s": train_s, "wall_s": time.time() - t0})
        loss_sum.zero_()
        n_loss = 0
        print(args.out.stem, json.dumps(result["curve"][-1]), flush=True)
        atomic_write_json(args.out, result)
    if args.save:
        save_fp16(trainer, args.save)
    for sampler, nfe in parse_sweep(args.sweep):
        if time.time() - t0 > args.sweep_deadline_s:
            result["sweep_skipped"] = "sweep deadline reached"
            atomic_write_json(args.out, result)
            break
        fd = fd_digits(ema_samples(trainer, args.n_eval, sampler, nfe))
        result["sweep"].append({"sampler": sampler, "nfe": nfe, "fd": fd})
        atomic_write_json(args.out, result)
    print(args.out.stem, "sweep", json.dumps(result["sweep"]), flush=True)
    trainer.close()


if __name__ == "__main__":
    main()
