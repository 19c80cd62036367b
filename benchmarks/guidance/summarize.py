"""Collect benchmarks/guidance/run.sh's eval reports into guidance.json and plot FD-digits and class accuracy vs W."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.plots import figure, save_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", type=Path, help="folder with eval-uncond.json and eval-cond-wW.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    uncond = json.loads((args.results / "eval-uncond.json").read_text())
    rows = []
    for path in args.results.glob("eval-cond-*.json"):
        res = json.loads(path.read_text())["results"]
        pr = res["fd-digits"]["protocol"]
        rows.append({"guidance": pr["guidance"], "guidance_interval": pr.get("guidance_interval"),
                     "fd_digits": res["fd-digits"]["value"], "class_accuracy": res["class-accuracy"]["value"],
                     "nfe": pr.get("nfe"), "network_evaluations_per_sample": pr.get("network_evaluations")})
    rows.sort(key=lambda r: (r["guidance_interval"] or [], r["guidance"]))
    command = f"RUNS='{os.environ.get('RUNS', '')}' OUT=... bash benchmarks/guidance/run.sh"
    out = {"protocol": {**provenance(), "command": command,
                        "models": {m: json.loads((args.results / f"config-{m}.json").read_text())
                                   for m in ("uncond", "cond")},
                        "eval": uncond["results"]["fd-digits"]["protocol"]},
           "unconditional": {"fd_digits": uncond["results"]["fd-digits"]["value"]}, "guided": rows}
    # The reading: the lowest FD among the W whose samples the classifier labels >= 99% right, else the most
    # accurate W.
    accurate = [r for r in rows if r["class_accuracy"] >= 0.99]
    out["best_w"] = (min(accurate, key=lambda r: r["fd_digits"]) if accurate
                     else max(rows, key=lambda r: (r["class_accuracy"], -r["fd_digits"])))
    out["best_w_rule"] = "lowest FD-digits among W with class accuracy >= 0.99, else the highest accuracy"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "guidance.json", out)  # rewritten after every evaluation: never half-written
    fig, (a, b) = figure(ncols=2, figsize=(10, 3.6))
    ev = out["protocol"]["eval"]
    for interval in sorted({tuple(r["guidance_interval"] or ()) for r in rows}):
        line = [r for r in rows if tuple(r["guidance_interval"] or ()) == interval]
        label = f"guided on sigma in ({interval[0]:g}, {interval[1]:g}]" if interval else "guided at every step"
        a.plot([r["guidance"] for r in line], [r["fd_digits"] for r in line], "o-", label=label)
        b.plot([r["guidance"] for r in line], [100 * r["class_accuracy"] for r in line], "o-", label=label)
    a.axhline(out["unconditional"]["fd_digits"], color="gray", ls="--", label="unconditional model")
    a.set(xlabel="guidance W", ylabel="FD-digits",
          title=f"FD-digits, {ev['n_generated']:,} samples, {ev['sampler']} {ev['nfe']} NFE")
    a.legend(fontsize=8)
    b.axhline(99, color="gray", ls=":", label="99%")
    b.set(xlabel="guidance W", ylabel="class accuracy (%)", title="digits classifier agrees with the class")
    b.legend(fontsize=8)
    save_figure(fig, args.out / "guidance.png")
    print(json.dumps({"unconditional": out["unconditional"], "guided": rows}, indent=1))


if __name__ == "__main__":
    main()
