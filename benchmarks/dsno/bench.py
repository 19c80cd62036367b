"""DSNO on 32-px digits (issue 6): trajectory-generation throughput, then students vs their teacher.

``traj``: in one process, plain sampling of ``--n-plain`` seeds with the teacher's sampler, then
``generate_trajectories`` of ``--seeds`` with the same sampler, NFE, batch and bf16 network: seeds/s of each and their
ratio (the target: trajectories within 1.2x of plain sampling). The trajectory set is what the students train on.

``eval``: on ``--n-eval`` evaluation seeds disjoint from every training trajectory, FD-digits (against the digits32
test split) of the teacher at 35 NFE (heun) and at 1, 2, 4, 8 NFE with each fast sampler, and of each student at one
call; each student's mean squared error to the teacher's heun-35 samples of the same seeds; seconds per image at
batch 1 and 256 for the student's call, the teacher at 35 NFE and the teacher's best sampler at 4 NFE.

    python benchmarks/dsno/bench.py traj --teacher T.safetensors --out runs/traj --json res/traj.json
    python benchmarks/dsno/bench.py eval --teacher T.safetensors --student main=runs/s-main --json res/eval.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.bench.timing import timed_windows
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.distill import generate_trajectories
from fastdiffusion.errors import UserError
from fastdiffusion.metrics.digits_classifier import fd_digits
from fastdiffusion.models import load_model
from fastdiffusion.sampling import generate
from fastdiffusion.seeds import format_seeds, parse_seeds

FAST_SAMPLERS = ("euler", "dpmpp-2m", "dpmpp-3m", "ipndm", "unipc", "lambda-ddim", "ipndm@tuned", "lambda-ddim@tuned",
                 "dpmpp-2m@tuned")  # name@schedule: the default schedule unless one is named
LOW_NFES = (1, 2, 4, 8)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU only to smoke-test the script


def timed(fn) -> float:
    """Seconds of one ``fn()`` call, no warm-up (device-side timing on CUDA)."""
    return timed_windows(fn, DEVICE, 0, 1, 1)


def draw(model, seeds: list[int], batch: int, **kw) -> torch.Tensor:
    with torch.autocast(DEVICE.type, torch.bfloat16, enabled=DEVICE.type == "cuda"):
        return generate(model, seeds, batch=batch, device=DEVICE, progress=False, **kw)


def cmd_traj(args: argparse.Namespace) -> None:
    teacher = load_model(args.teacher, device=DEVICE)
    seeds = parse_seeds(args.seeds)
    plain_seeds = list(range(10**6, 10**6 + args.n_plain))
    draw(teacher, plain_seeds[: args.batch], args.batch, sampler="heun", nfe=args.nfe)  # warm-up
    plain_s = timed(lambda: draw(teacher, plain_seeds, args.batch, sampler="heun", nfe=args.nfe))
    eager_bf16 = {"compile": False, "channels_last": False}  # as the plain draw above runs
    traj_s = timed(lambda: generate_trajectories(args.teacher, args.out, seeds, sampler="heun", nfe=args.nfe,
                                                 times=args.times, grid="quadratic", shard_size=args.shard_size,
                                                 batch=args.batch, device=DEVICE, fast=eager_bf16, progress=False))
    plain_rate, traj_rate = args.n_plain / plain_s, len(seeds) / traj_s
    result = {**provenance(DEVICE), "sampler": "heun", "nfe": args.nfe, "times": args.times, "batch": args.batch,
              "plain": {"seeds": args.n_plain, "seconds": plain_s, "seeds_per_s": plain_rate},
              "trajectories": {"seeds": len(seeds), "seconds": traj_s, "seeds_per_s": traj_rate,
                               "includes": "sampling, fp16 conversion, shard writes"},
              "slowdown": plain_rate / traj_rate}
    atomic_write_json(args.json, result)
    print(result, flush=True)


def per_image_seconds(model, batch: int, **kw) -> float:
    seeds = list(range(batch))
    return timed_windows(lambda: draw(model, seeds, batch, **kw), DEVICE, 1, 1, 3) / batch


def cmd_eval(args: argparse.Namespace) -> None:
    seeds = list(range(args.first_seed, args.first_seed + args.n_eval))
    teacher = load_model(args.teacher, device=DEVICE)
    result = {**provenance(DEVICE), "protocol": {
        "metric": "FD-digits (64-d classifier features)", "reference": "digits32 test split (360)",
        "n_generated": args.n_eval, "seeds": f"{format_seeds(seeds)} (no training trajectory uses them)",
        "teacher_reference": "heun 35 NFE", "network": "bf16 autocast, fp32 sampler state"},
        "teacher": [], "students": {}, "seconds_per_image": {}}
    ref = draw(teacher, seeds, 1000, sampler="heun", nfe=35)
    result["teacher"].append({"sampler": "heun", "nfe": 35, "fd": fd_digits(ref)})
    for nfe in LOW_NFES:
        for item in FAST_SAMPLERS:
            sampler, _, schedule = item.partition("@")
            try:
                x = draw(teacher, seeds, 1000, sampler=sampler, nfe=nfe, schedule=schedule or None)
            except UserError:  # this sampler cannot make this NFE
                continue
            result["teacher"].append({"sampler": item, "nfe": nfe, "fd": fd_digits(x),
                                      "mse_to_heun35": float((x - ref).square().mean())})
    atomic_write_json(args.json, result)
    best4 = min((r for r in result["teacher"] if r["nfe"] == 4), key=lambda r: r["fd"])
    timings = {"teacher heun 35": dict(sampler="heun", nfe=35),
               f"teacher {best4['sampler']} 4": dict(sampler=best4["sampler"].partition("@")[0], nfe=4,
                                                     schedule=best4["sampler"].partition("@")[2] or None)}
    for item in args.student:
        name, _, path = item.partition("=")
        student = load_model(path, device=DEVICE)
        x = draw(student, seeds, 1000, sampler="dsno", nfe=1)
        result["students"][name] = {"path": path, "config": student.net_config | {"backbone": "teacher's"},
                                    "times": len(student.generator_config["sigmas"]), "fd": fd_digits(x),
                                    "mse_to_heun35": float((x - ref).square().mean())}
        print(name, result["students"][name]["fd"], flush=True)
        if name == args.timed_student:
            timings[f"student {name} (1 call)"] = dict(model=student, sampler="dsno", nfe=1)
        atomic_write_json(args.json, result)
    for label, kw in timings.items():
        model = kw.pop("model", teacher)
        result["seconds_per_image"][label] = {str(b): per_image_seconds(model, b, **kw) for b in (1, 256)}
        atomic_write_json(args.json, result)
    print(result, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("traj")
    t.add_argument("--teacher", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--seeds", default="0-20999")
    t.add_argument("--n-plain", type=int, default=5000)
    t.add_argument("--nfe", type=int, default=35)
    t.add_argument("--times", type=int, default=4)
    t.add_argument("--batch", type=int, default=1000)
    t.add_argument("--shard-size", type=int, default=3000)
    t.add_argument("--json", type=Path, required=True)
    e = sub.add_parser("eval")
    e.add_argument("--teacher", required=True)
    e.add_argument("--student", action="append", default=[], metavar="NAME=PATH")
    e.add_argument("--timed-student", default="main")
    e.add_argument("--n-eval", type=int, default=1000)
    e.add_argument("--first-seed", type=int, default=100_000)
    e.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    (cmd_traj if args.cmd == "traj" else cmd_eval)(args)


if __name__ == "__main__":
    main()
