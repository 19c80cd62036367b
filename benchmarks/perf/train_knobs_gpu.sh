#!/usr/bin/env bash
# Issue 21 on one GPU, one device call: two Inductor options against the fast path, side by side in one process
# (`bench throughput`, EDM's CIFAR-10 DDPM++, batch 512, sampling batch 1024): one Triton configuration per pointwise
# kernel (`triton.autotune_pointwise = false`, training and sampling) and a CUDA-graphed training step
# (`triton.cudagraphs = true` for the training compile; sampling has CUDA graphs already).
# Usage: OUT=results bash benchmarks/perf/train_knobs_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 540 python -m fastdiffusion.bench.throughput --batch 512 --sample-batch 1024 \
  --modes 'fast,fast+compile_options={"triton.autotune_pointwise":false},fast+compile_options={"triton.cudagraphs":true}' \
  --out "$OUT/train_knobs.json" > "$OUT/train_knobs.log" 2>&1
echo "train_knobs: rc $?"
tail -5 "$OUT/train_knobs.log"
