#!/usr/bin/env bash
# One 2-GPU device call: a kernel profile of the fast path and the coordinate-descent Inductor option (issue 5) on
# GPU 0 while the FDM seed study (issue 3) trains on GPU 1. Returns at most 4 files. Usage: OUT=res bash ...
set -u
OUT=${OUT:-results}
L=$OUT/logs
mkdir -p "$L"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$L/nvidia-smi.txt" 2>&1
GPU=1 OUT=$OUT AGREE=0 bash benchmarks/fdm_training/seeds_gpu.sh &
END=$(($(date +%s) + ${BUDGET_S:-540}))
CUDA_VISIBLE_DEVICES=0 timeout 200 python benchmarks/perf/profile_gpu.py --out "$OUT/profile.json" >"$L/profile.log" 2>&1
CUDA_VISIBLE_DEVICES=0 timeout $((END - $(date +%s))) python -m fastdiffusion.bench.throughput --batch 512 \
  --sample-batch 1024 --modes 'fast+compile_options={"coordinate_descent_tuning":true}' --out "$OUT/coord.json" \
  >"$L/coord.log" 2>&1
wait
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
