#!/usr/bin/env bash
# Issue 21 on one GPU, one device call: where a cold compile goes, whether one Triton configuration per pointwise
# kernel (first_samples.py's `:untuned` variant) compiles faster at the same speed, and the compile costs and speed-ups
# of fastpath.COMPILE_COSTS re-measured (the sampling networks of its fit, and the training step).
# Usage: OUT=results bash benchmarks/perf/compile_cost_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
WORK=${TMPDIR:-/tmp}/compile_cost_work
rm -rf "$WORK"
timeout 540 python benchmarks/perf/first_samples.py --parts measure,train --calls 10 \
  --measure ddpmpp-cifar10:1024:32:3,ddpmpp-cifar10:1024:32:3:untuned,ddpmpp-small:64:32:1,ddpmpp-small:64:32:1:untuned \
  --out "$OUT/compile_cost.json" --work "$WORK" 2>&1 | tee "$OUT/compile_cost.log"
