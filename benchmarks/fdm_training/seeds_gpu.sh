#!/usr/bin/env bash
# Issue 3, one GPU: the EDM pair (edm, fdm-edm) x 3 seeds, trained side by side on one GPU for TRAIN_S seconds each
# with the compiled channels_last fast path, FD-digits every EVAL_KIMG kimg, then the FD-vs-NFE sweep of the final
# models and (AGREE=1, default) the fast-path agreement check on the seed-0 EDM model, which is saved as
# $OUT/edm-s0.safetensors (fp16 weights, 14 MB).
# Usage: OUT=res GPU=0 TRAIN_S=360 SWEEP_S=450 EVAL_KIMG=50 bash benchmarks/fdm_training/seeds_gpu.sh
set -u
OUT=${OUT:-results}
R=runs/seeds
mkdir -p "$R" "$OUT"
export CUDA_VISIBLE_DEVICES=${GPU:-0} PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
TRAIN_S=${TRAIN_S:-400}
SWEEP_S=${SWEEP_S:-480}
EVAL_KIMG=${EVAL_KIMG:-100}
SWEEP="heun:5,9,13,19,35;dpmpp-2m:4,6,10,20"
for seed in 0 1 2; do
  for p in edm fdm-edm; do
    extra=()
    [ "$p$seed" = edm0 ] && extra=(--save "$OUT/edm-s0.safetensors")
    python benchmarks/digits32/train_eval.py --process "$p" --seed "$seed" --compile 1 --channels-last 1 \
      --deadline-s "$TRAIN_S" --sweep-deadline-s "$SWEEP_S" --eval-every-kimg "$EVAL_KIMG" --sweep "$SWEEP" \
      --out "$R/$p-s$seed.json" "${extra[@]}" >"$R/$p-s$seed.log" 2>&1 &
  done
done
wait
if [ "${AGREE:-1}" = 1 ]; then
  timeout 90 python benchmarks/perf/fastpath_agreement.py --model "$OUT/edm-s0.safetensors" --out "$OUT/agreement.json" \
    >"$R/agreement.log" 2>&1
fi
tar czf "$OUT/seeds.tgz" --exclude='*.safetensors' "$R"
