#!/usr/bin/env bash
# Issue 20 on one GPU, one device call: a change to the schedule fit measured on one trained model. Trains one digits32
# model (train.sh: edm, fdm-edm or cunet; train split, 1,200 steps of 256), then `bench samplers` of it with this
# source's fits and PREV_SRC's, one after the other on the same model, seeds and GPU.
# Usage: OUT=dir PREV_SRC=dir PREV_COMMIT=sha [BENCH_ARGS=...] bash benchmarks/samplers_trained/fit_ab.sh edm
set -euo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
m=${1:-edm}
start=$(date +%s)
PYTHONPATH=$PWD bash benchmarks/samplers_trained/train.sh "$m" "$OUT"
run=/tmp/runs/$m
for src in "$PWD" "$PREV_SRC"; do
  which=new commit=${FASTDIFFUSION_GIT_COMMIT:-}; [ "$src" = "$PWD" ] || which=prev commit=$PREV_COMMIT
  # from inside the source: `python -m` puts the working directory first on the import path
  (cd "$src" && PYTHONPATH=$src FASTDIFFUSION_GIT_COMMIT=$commit python -m fastdiffusion.cli bench samplers "$run" \
      --out "$OUT/$m-$which" ${BENCH_ARGS:-} > "$OUT/bench-$m-$which.log" 2>&1)
  echo "$m $which benchmarked at $(( $(date +%s) - start )) s"
done
