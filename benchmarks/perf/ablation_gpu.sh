#!/usr/bin/env bash
# Issue 5, one GPU: what each fast-path switch buys for the EDM CIFAR-10 DDPM++ network (batch 512 training,
# batch 1024 sampling); one JSON per step under $OUT, each rewritten after every mode, all within BUDGET_S seconds.
# Usage: OUT=res GPU=0 bash benchmarks/perf/ablation_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
export CUDA_VISIBLE_DEVICES=${GPU:-0} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
END=$(($(date +%s) + ${BUDGET_S:-560}))
left() { echo $((END - $(date +%s))); }
B="--batch 512 --sample-batch 1024 --warmup 5 --window 5 --repeats 5"
TP="python -m fastdiffusion.bench.throughput"
step() {  # step NAME CMD...: run while time is left, output in $OUT/NAME.{json,log}
  local name=$1
  shift
  [ "$(left)" -gt 30 ] && timeout "$(left)" "$@" $B --out "$OUT/$name.json" >"$OUT/$name.log" 2>&1
}
# The fast path, then with cuDNN autotuning off (same compiled graphs, so the Inductor cache makes it cheap).
step ablate_cudnn $TP --modes "fast,fast+cudnn_benchmark=false"
# The fast path with the old depthwise-convolution resampling.
step ablate_resample python benchmarks/perf/resample_ablation.py --modes fast
# Inductor options: 1x1 convolutions as matmuls (fusable epilogues), then max-autotune (slow to compile).
step ablate_conv1x1 $TP --modes 'fast+compile_options={"conv_1x1_as_mm":true}'
step ablate_autotune $TP --modes 'fast+compile_options={"max_autotune":true}'
