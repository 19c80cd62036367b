#!/usr/bin/env bash
# Issue 21 on one GPU, one device call (under 10 minutes): first-sample times of `fastdiffusion sample` with and without
# torch.compile (cold and warm Inductor cache, and the automatic default), and the compile costs and speed-ups that
# fastpath.COMPILE_COSTS is set from. Usage: OUT=results [PREV_SRC=dir] bash benchmarks/perf/first_samples.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
WORK=${TMPDIR:-/tmp}/first_samples_work  # the model, samples and Inductor caches: not results
rm -rf "$WORK"
timeout 580 python benchmarks/perf/first_samples.py --out "$OUT/first_samples.json" --work "$WORK" "$@" 2>&1 \
  | tee "$OUT/first_samples.log"  # PREV_SRC, if set, is read by the script
