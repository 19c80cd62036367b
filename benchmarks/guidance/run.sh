#!/usr/bin/env bash
# Issue 18 on one GPU: an unconditional and a class-conditional EDM digits32 model with the same budget (train split,
# ddpmpp-small, 1,200 steps of 256; the conditional one with --cond, label dropout 0.1), then FD-digits of 1,000 samples
# (seeds 100000-100999, heun 35) of the unconditional model and of the conditional one at --class random for each
# entry of $RUNS: W (--guidance W) or W@LO,HI (--guidance W --guidance-interval LO,HI), with the digits classifier's
# class accuracy. summarize.py writes guidance.json and guidance.png after every evaluation.
# Usage: OUT=dir [RUNS='1 1.2 1.5 3@0.28,5.42'] bash benchmarks/guidance/run.sh
set -euo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD FASTDIFFUSION_GIT_COMMIT=${FASTDIFFUSION_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
RES=/tmp/guidance
rm -rf "$RES" && mkdir -p "$RES"
N=${N:-1000}
common=(--data digits32 --data-split train --process edm --net "${NET:-ddpmpp-small}" --batch "${BATCH:-256}"
        --steps "${STEPS:-1200}" --ckpt-every "${STEPS:-1200}" --quiet)
ev=(--metrics fd-digits --n "$N" --seeds "100000-$((100000 + N - 1))" --nfe "${NFE:-35}" --quiet)
for m in uncond cond; do
  start=$(date +%s)
  extra=()
  [ $m = cond ] && extra=(--cond)
  python -m fastdiffusion.cli train "${common[@]}" "${extra[@]}" --run-dir "$RES/runs/$m" > "$RES/train-$m.log" 2>&1
  cp "$RES/runs/$m/config.json" "$RES/config-$m.json"
  echo "$m trained in $(( $(date +%s) - start )) s"
done
python -m fastdiffusion.cli eval "$RES/runs/uncond" "${ev[@]}" --out "$RES/eval-uncond.json"
export RUNS=${RUNS:-1 1.5 2 3 4 1.2 1.3 1.4 2@0.28,5.42 3@0.28,5.42 4@0.28,5.42}  # summarize.py records it
for run in $RUNS; do
  w=${run%%@*}
  interval=()
  [ "$run" != "$w" ] && interval=(--guidance-interval "${run#*@}")
  python -m fastdiffusion.cli eval "$RES/runs/cond" "${ev[@]}" --metrics fd-digits,class-accuracy --class random \
      --guidance "$w" "${interval[@]}" --out "$RES/eval-cond-$run.json"
  echo "$run evaluated $(date +%T)"
  python benchmarks/guidance/summarize.py "$RES" --out "$OUT" > /dev/null
  cp "$RES"/*.log "$OUT"/ 2>/dev/null || true
done
python benchmarks/guidance/summarize.py "$RES" --out "$OUT"
