"""Collect benchmarks/guidance/run.sh's eval reports into guidance.json and plot FD-digits and class accuracy vs W."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastdiffusion.bench.provenance import provenance
from fastdiffusion.plots import figure, save_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", type=Path, help="folder with eval-uncond.json and eval-cond-wW.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    uncond = json.loads((args.results / "eval-uncond.json").read_text())
    rows = []
    for path in sorted(args.results.glob("eval-cond-w*.json"), key=lambda p: float(p.stem.split("-w")[1])):
        rep = json.loads(path.read_text())
        res = rep["results"]
        rows.append({"guidance": float(path.stem.split("-w")[1]), "fd_digits": res["fd-digits"]["value"],
                     "class_accuracy": res["class-accuracy"]["value"],
                     "nfe": res["fd-digits"]["protocol"].get("nfe"),
                     "network_evaluations_per_sample": res["fd-digits"]["protocol"].get("network_evaluations")})
    out = {"protocol": {**provenance(), "command": "OUT=... bash benchmarks/guidance/run.sh",
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
    (args.out / "guidance.json").write_text(json.dumps(out, indent=1) + "\n")
    fig, (a, b) = figure(ncols=2, figsize=(9, 3.4))
    ws = [r["guidance"] for r in rows]
    a.plot(ws, [r["fd_digits"] for r in rows], "o-", label="conditional, --class random")
    a.axhline(out["unconditional"]["fd_digits"], color="gray", ls="--", label="unconditional")
    ev = out["protocol"]["eval"]
    a.set(xlabel="guidance W", ylabel=f"FD-digits ({ev['n_generated']:,} samples, {ev['sampler']} {ev['nfe']})",
          title="FD-digits vs W")
    a.legend()
    b.plot(ws, [100 * r["class_accuracy"] for r in rows], "o-")
    b.axhline(99, color="gray", ls=":", label="99%")
    b.set(xlabel="guidance W", ylabel="class accuracy (%)", title="digits classifier agrees with the class")
    b.legend()
    save_figure(fig, args.out / "guidance.png")
    print(json.dumps({"unconditional": out["unconditional"], "guided": rows}, indent=1))


if __name__ == "__main__":
    main()
