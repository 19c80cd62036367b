#!/usr/bin/env bash
# Issue 21 on one GPU, one device call: two knobs the fast path does not set, measured against it in the same call.
# 1. Inductor's `freezing` for the compiled sampling network (first_samples.py's `:freezing` variant, cold and warm).
# 2. cuDNN's autotuner trying every convolution algorithm (benchmark_limit = 0 instead of 10): `bench throughput` of
#    EDM's CIFAR-10 DDPM++ (batch 512, sampling batch 1024), compiled fast path, default limit then limit 0.
# Usage: OUT=results bash benchmarks/perf/knobs_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 200 python benchmarks/perf/first_samples.py --parts measure --measure ddpmpp-cifar10:1024:32:3:freezing \
  --out "$OUT/freezing.json" --work "${TMPDIR:-/tmp}/knobs_work" > "$OUT/freezing.log" 2>&1
echo "freezing: rc $?"
for limit in 10 0; do
  timeout 190 python -c "import sys, torch
torch.backends.cudnn.benchmark_limit = int(sys.argv[1])
from fastdiffusion.bench.throughput import add_arguments, main
import argparse
p = argparse.ArgumentParser(); add_arguments(p); main(p.parse_args(sys.argv[2:]))" "$limit" \
    --modes fast --batch 512 --sample-batch 1024 --out "$OUT/throughput_limit$limit.json" \
    > "$OUT/throughput_limit$limit.log" 2>&1
  echo "cudnn benchmark_limit $limit: rc $?"
done
