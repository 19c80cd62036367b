#!/usr/bin/env bash
# Issue 5, two GPUs (device kind nvidia-h200-x2), one device call: DDP training and sharded sampling of EDM's
# CIFAR-10 DDPM++ network on both GPUs at 512 per GPU, then one GPU in the same call, so the scaling ratio compares
# like with like; then, while time is left, the 2-GPU run with 100 MB DDP buckets. One JSON per run under $OUT,
# each rewritten after every mode, all within BUDGET_S seconds.
# Usage: OUT=res bash benchmarks/throughput/two_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
END=$(($(date +%s) + ${BUDGET_S:-570}))
left() { echo $((END - $(date +%s))); }
B=(--batch 512 --sample-batch 1024)
run() {  # run NAME CMD...: while time is left, output in $OUT/NAME.{json,log}
  local name=$1
  shift
  [ "$(left)" -gt 60 ] && timeout "$(left)" "$@" "${B[@]}" --out "$OUT/$name.json" >"$OUT/$name.log" 2>&1
  echo "$name rc=$? $(date +%T)"
}
run h200_two_gpu_b512_per_gpu torchrun --nproc-per-node 2 -m fastdiffusion.bench.throughput --modes fast
CUDA_VISIBLE_DEVICES=0 run h200_one_gpu_b512_same_call python -m fastdiffusion.bench.throughput --modes fast
python - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
two, one = (json.loads((out / f"h200_{n}_b512_{s}.json").read_text())["results"]["fast@512"]
            for n, s in (("two_gpu", "per_gpu"), ("one_gpu", "same_call")))
print(f"2 GPUs / 1 GPU: training {two['train_img_per_s'] / one['train_img_per_s']:.3f}x "
      f"({two['train_s_per_kimg']:.3f} vs {one['train_s_per_kimg']:.3f} s/kimg), "
      f"sampling {two['sample_img_calls_per_s'] / one['sample_img_calls_per_s']:.3f}x")
EOF
run h200_two_gpu_b512_bucket100 torchrun --nproc-per-node 2 -m fastdiffusion.bench.throughput \
  --modes fast+ddp_bucket_mb=100
