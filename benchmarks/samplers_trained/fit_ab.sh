#!/usr/bin/env bash
# Issue 20 on one GPU, one device call: a change to the schedule fit measured on one trained model. Trains one digits32
# model of run.sh (edm, fdm-edm or cunet; train split, 1,200 steps of 256), then `bench samplers` of it with this
# source's fits and PREV_SRC's, one after the other on the same model, seeds and GPU.
# Usage: OUT=dir PREV_SRC=dir PREV_COMMIT=sha [BENCH_ARGS=...] bash benchmarks/samplers_trained/fit_ab.sh edm
set -euo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
m=${1:-edm}
case $m in
  edm) args="--process edm --net ddpmpp-small" ;;
  fdm-edm) args="--process fdm-edm --net ddpmpp-small" ;;
  cunet) args="--process edm --net cunet-small-euler2" ;;
  *) echo "fit_ab.sh: unknown model $m (edm, fdm-edm or cunet)" >&2; exit 2 ;;
esac
run=/tmp/runs/$m
rm -rf "$run"
start=$(date +%s)
PYTHONPATH=$PWD python -m fastdiffusion.cli train --data digits32 --data-split train $args --batch ${BATCH:-256} \
    --steps ${STEPS:-1200} --ckpt-every ${STEPS:-1200} --run-dir "$run" --quiet > "$OUT/train-$m.log" 2>&1
echo "$m trained in $(( $(date +%s) - start )) s"
cp "$run/config.json" "$OUT/config-$m.json"
for src in "$PWD" "$PREV_SRC"; do
  which=new commit=${FASTDIFFUSION_GIT_COMMIT:-}; [ "$src" = "$PWD" ] || which=prev commit=$PREV_COMMIT
  # from inside the source: `python -m` puts the working directory first on the import path
  (cd "$src" && PYTHONPATH=$src FASTDIFFUSION_GIT_COMMIT=$commit python -m fastdiffusion.cli bench samplers "$run" \
      --out "$OUT/$m-$which" ${BENCH_ARGS:-} > "$OUT/bench-$m-$which.log" 2>&1)
  echo "$m $which benchmarked at $(( $(date +%s) - start )) s"
done
