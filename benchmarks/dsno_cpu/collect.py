"""Gather benchmarks/dsno_cpu/run.sh's outputs into one results JSON: FD-digits of student and teacher, wall times,
the per-pixel spread of the samples and the collapse check's log rows.

    python benchmarks/dsno_cpu/collect.py --out-dir OUT --teacher RUN --json benchmarks/dsno_cpu/results.json \
        [--before-fix-run RUN --before-fix-eval EVAL.json]

Spread: the standard deviation of each pixel over the samples, averaged over pixels, in grey levels of 0..255 (the
images are in [-1, 1]: x 127.5). The student's is over its 1,000 evaluation samples (seeds 100000-100999), the
teacher's over the 2,000 trajectories' final samples (heun 35, the sampler its evaluation uses).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.distill import TrajectorySet
from fastdiffusion.models import load_model
from fastdiffusion.sampling import generate
from fastdiffusion.seeds import parse_seeds

GREY = 127.5


def spread(x: torch.Tensor) -> float:
    return float(x.float().flatten(1).std(0).mean()) * GREY


def fd(path: Path) -> dict:
    report = json.loads(path.read_text())
    pr = report["protocol"]
    return {"fd_digits": report["results"]["fd-digits"]["value"], "sampler": pr["sampler"], "nfe": pr["nfe"],
            "n": pr["n_generated"], "seeds": pr["seeds"], "weights": pr["weights"], "model_sha256": pr["model_sha256"]}


def checks(log: Path) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if "spread_ratio" in r]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--before-fix-run", type=Path, help="run directory of the same recipe's student before the fix")
    ap.add_argument("--before-fix-eval", type=Path, help="its eval JSON (the same eval command)")
    args = ap.parse_args()
    out = args.out_dir
    times = {p.stem: round(float(p.read_text()), 1) for p in sorted(out.glob("*.time"))}
    traj = TrajectorySet(out / "traj")
    _, x = traj.rows(range(len(traj)))
    seeds = parse_seeds("100000-100999")
    teacher = fd(out / "eval_teacher.json")

    def student(name: str) -> dict:
        samples = generate(load_model(out / name / "student.safetensors"), seeds, batch=256, sampler="dsno", nfe=1,
                           progress=False)
        got = fd(out / f"eval_{name}.json")
        return {**got, "spread_grey": spread(samples), "ratio_to_teacher_fd": got["fd_digits"] / teacher["fd_digits"],
                "train_seconds": times.get(name.replace("student", "train")),
                "config": json.loads((out / name / "config.json").read_text()),
                "collapse_checks": checks(out / name / "log.jsonl")}

    variants = sorted(p.parent.name for p in out.glob("student_*/student.safetensors"))
    result = {
        **provenance("cpu"),
        "teacher": {"run": args.teacher, **teacher, "spread_grey": spread(x[:, 0])},
        "trajectories": {k: traj.manifest[k] for k in ("sampler", "nfe", "times", "grid", "num_seeds", "sigmas")},
        "student": student("student"),
        "variants": {name: student(name) for name in variants},
        "wall_seconds": {**times, "trajectories_plus_training": round(times["traj"] + times["train"], 1)},
        "threads": "OMP_NUM_THREADS=1 on a 2-core machine shared with other jobs",
    }
    if args.before_fix_run:
        old = load_model(args.before_fix_run / "student.safetensors")
        old_samples = generate(old, seeds, batch=256, sampler="dsno", nfe=1, progress=False)
        result["before_fix"] = {**fd(args.before_fix_eval), "spread_grey": spread(old_samples),
                                "student_process": old.process.name,
                                "note": "the same trajectory settings and training command (without --ckpt-every) "
                                        "before the fix of the FDM student's input scale "
                                        "(fastdiffusion/distill/student.py student_process)"}
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("teacher", "wall_seconds")}, indent=1))
    for name, st in {"student": result["student"], **result["variants"]}.items():
        print(name, {k: st[k] for k in ("fd_digits", "spread_grey", "ratio_to_teacher_fd", "train_seconds")})


if __name__ == "__main__":
    main()
