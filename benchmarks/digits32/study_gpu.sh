#!/usr/bin/env bash
# One device call (2 x H200) for the digits32 studies of issues 3, 4 and 7: every training run of
# benchmarks/digits32/train_eval.py shares a GPU with the others (these ~7M-parameter runs leave an H200 mostly idle
# alone), so only FD-vs-kimg curves come from here; throughput and latency are measured afterwards on an idle GPU
# by benchmarks/cunet/bench.py. Usage: OUT=results bash benchmarks/digits32/study_gpu.sh
set -u
OUT=${OUT:-results}
R=runs/study
mkdir -p "$R" "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
TRAIN_S=${TRAIN_S:-360}
SWEEP_S=${SWEEP_S:-440}
EDM_SWEEP="heun:5,7,9,13,19,35;dpmpp-2m:4,6,8,10,15,20"
PSLD_SWEEP="em:10;sscs:10;csps-d:10;csps-s:10;sps-s:10;em:20;sscs:20;csps-d:20;csps-s:20;sps-s:20"
PSLD_SWEEP="$PSLD_SWEEP;em:50;sscs:50;csps-d:50;csps-s:50;sps-s:50"

run() {  # run GPU NAME ARGS...: one training run in the background, its log in $R/NAME.log
  local gpu=$1 name=$2
  shift 2
  CUDA_VISIBLE_DEVICES=$gpu python benchmarks/digits32/train_eval.py --deadline-s "$TRAIN_S" \
    --sweep-deadline-s "$SWEEP_S" --eval-every-kimg 80 --out "$R/$name.json" "$@" >"$R/$name.log" 2>&1 &
}

# GPU 0: the three FDM pairs (issue 3), seed 0; the edm model is the DSNO teacher and the cunet baseline.
run 0 edm --process edm --sweep "$EDM_SWEEP" --save "$R/edm.safetensors"
run 0 fdm-edm --process fdm-edm --sweep "$EDM_SWEEP"
for p in vp ve; do
  run 0 "$p" --process "$p" --sweep "$EDM_SWEEP"
  run 0 "fdm-$p" --process "fdm-$p" --sweep "$EDM_SWEEP"
done
# GPU 1: a second seed of the EDM pair, the multiplier / warm-up / network-size ablations, cunet (issue 7), PSLD (4).
run 1 edm-s1 --process edm --seed 1 --sweep "$EDM_SWEEP"
run 1 fdm-edm-s1 --process fdm-edm --seed 1 --sweep "$EDM_SWEEP"
run 1 fdm-edm-m1 --process fdm-edm --process-opt multiplier=1 --sweep "$EDM_SWEEP"
run 1 fdm-edm-nowarmup --process fdm-edm --process-opt warmup_ite=0 --sweep "$EDM_SWEEP"
run 1 edm-tiny --process edm --net ddpmpp-tiny --sweep "$EDM_SWEEP"
run 1 fdm-edm-tiny --process fdm-edm --net ddpmpp-tiny --sweep "$EDM_SWEEP"
run 1 cunet-small --process edm --net cunet-small --sweep "heun:9,19,35" --save "$R/cunet-small.safetensors"
run 1 psld --process psld --eval-sampler csps-d --eval-nfe 50 --sweep "$PSLD_SWEEP"
wait
nvidia-smi --query-gpu=name,memory.used --format=csv >"$R/nvidia-smi.txt" 2>&1

# Issue 7 measurements on the now idle GPU 0.
CUDA_VISIBLE_DEVICES=0 timeout 120 python benchmarks/cunet/bench.py --model cunet-small="$R/cunet-small.safetensors" \
  --model ddpmpp-small="$R/edm.safetensors" --out "$R/cunet_bench.json" >"$R/cunet_bench.log" 2>&1

cp "$R/edm.safetensors" "$OUT/teacher_edm.safetensors"
cp "$R/cunet-small.safetensors" "$OUT/cunet_small.safetensors"
tar czf "$OUT/study.tgz" --exclude='*.safetensors' "$R"
tail -n 3 "$R"/*.log
