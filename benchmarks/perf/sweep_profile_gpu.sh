#!/usr/bin/env bash
# Issue 21 on one GPU, one device call (about 9 min on an H100):
#  1. Item 4's batch sweep: the training fast path at per-GPU batch 128, 256, 512 and 1024 in one process
#     (`bench throughput`, EDM's CIFAR-10 DDPM++, training only) -> sweep.json.
#  2. The kernel profile of a compiled training step (batch 512) and of a compiled, CUDA-graphed sampling call (batch
#     1024): how much of each is cuDNN convolution -> profile.json. Its batch-512 training compile is warm from step 1.
# Usage: OUT=results bash benchmarks/perf/sweep_profile_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 330 python -m fastdiffusion.bench.throughput --batch 128,256,512,1024 --modes fast --sample-batch 0 \
  --repeats 3 --out "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
echo "sweep: rc $?"
timeout 220 python benchmarks/perf/profile_gpu.py --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
echo "profile: rc $?"
