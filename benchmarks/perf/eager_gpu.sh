#!/usr/bin/env bash
# Issue 21 on one GPU, one device call: the eager channels_last GroupNorm (eager_groupnorm.py), then
# `bench throughput` of EDM's CIFAR-10 DDPM++ (batch 512, sampling batch 1024) eager (the fast path with
# --no-compile, what the automatic rule runs small jobs on) and compiled, this source and PREV_SRC's side by side.
# Usage: OUT=results PREV_SRC=dir PREV_COMMIT=sha [MODES="fast+compile=false fast"] bash benchmarks/perf/eager_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
OUT=$(realpath "$OUT")
PYTHONPATH=$PWD timeout 60 python benchmarks/perf/eager_groupnorm.py --out "$OUT/eager_groupnorm.json"
for mode in ${MODES:-fast+compile=false fast}; do
  tag=${mode%%+*}; [ "$mode" = fast ] || tag=eager
  for src in "$PWD" "$PREV_SRC"; do
    which=new commit=${FASTDIFFUSION_GIT_COMMIT:-}; [ "$src" = "$PWD" ] || which=prev commit=$PREV_COMMIT
    # run from inside the source: `python -m` puts the working directory first on the import path
    (cd "$src" && PYTHONPATH=$src FASTDIFFUSION_GIT_COMMIT=$commit timeout 200 python -m fastdiffusion.bench.throughput \
      --modes "$mode" --batch 512 --sample-batch 1024 --out "$OUT/throughput_${tag}_${which}.json" \
      > "$OUT/throughput_${tag}_${which}.log" 2>&1)
    echo "$mode $which: rc $?"
  done
done
