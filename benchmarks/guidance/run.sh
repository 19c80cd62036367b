#!/usr/bin/env bash
# Issue 18 on one GPU: an unconditional and a class-conditional EDM digits32 model with the same budget (train split,
# ddpmpp-small, 1,200 steps of 256; the conditional one with --cond, label dropout 0.1), then FD-digits of 1,000 samples
# (seeds 100000-100999, heun 35) of the unconditional model and of the conditional one at --class random and
# --guidance W for W in $WS (default 1 1.5 2 3 4), with the digits classifier's class accuracy. summarize.py writes
# guidance.json and guidance.png. Usage: OUT=dir [WS='1 1.2 1.5'] bash benchmarks/guidance/run.sh
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
  python -m fastdiffusion.cli train "${common[@]}" "${extra[@]}" --run-dir "/tmp/runs/$m" > "$RES/train-$m.log" 2>&1
  cp "/tmp/runs/$m/config.json" "$RES/config-$m.json"
  echo "$m trained in $(( $(date +%s) - start )) s"
done
python -m fastdiffusion.cli eval /tmp/runs/uncond "${ev[@]}" --out "$RES/eval-uncond.json"
for w in ${WS:-1 1.5 2 3 4}; do
  python -m fastdiffusion.cli eval /tmp/runs/cond "${ev[@]}" --metrics fd-digits,class-accuracy --class random \
      --guidance "$w" --out "$RES/eval-cond-w$w.json"
  echo "W=$w evaluated $(date +%T)"
done
python benchmarks/guidance/summarize.py "$RES" --out "$OUT"
cp "$RES"/*.log "$OUT"/ 2>/dev/null || true
