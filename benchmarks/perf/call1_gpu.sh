#!/usr/bin/env bash
# One 2-GPU device call: the switch ablation (issue 5) on GPU 0 while the FDM seed study (issue 3) trains on GPU 1.
# The ablation times an otherwise idle GPU; the study only yields FD-vs-kimg curves. Usage: OUT=res bash ...
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.txt" 2>&1
GPU=1 OUT=$OUT bash benchmarks/fdm_training/seeds_gpu.sh &
GPU=0 OUT=$OUT BUDGET_S=${BUDGET_S:-560} bash benchmarks/perf/ablation_gpu.sh
wait
