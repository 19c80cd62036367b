#!/usr/bin/env bash
# One device call (1 x H200) for issue 5's loss-curve check and issue 7's batch-1 latency with CUDA graphs.
#  1. `fastdiffusion info` for cunet-small and ddpmpp-small on 32-px digits: eager bf16, then with CUDA graphs,
#     on an otherwise idle GPU.
#  2. Short training runs (ddpmpp-small, EDM, digits32 train split, batch 256, 600 steps) in three modes x two seeds,
#     side by side: eager fp32, eager bf16, fast (bf16 + channels_last + torch.compile). Same seed = same data, noise
#     and sigma draws, so a mode's loss curve differs from fp32's only by arithmetic; the seed-to-seed spread is the
#     yardstick (benchmarks/perf/loss_curves.py compares them).
# Usage: OUT=results bash benchmarks/perf/perf_gpu.sh
set -u
OUT=${OUT:-results}
R=runs/perf
mkdir -p "$R" "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
FD="python -m fastdiffusion.cli"
for net in cunet-small ddpmpp-small; do
  $FD info --net $net --channels 1 --resolution 32 --device cuda --bf16 --json >"$R/info-$net.json" 2>"$R/info-$net.log"
  $FD info --net $net --channels 1 --resolution 32 --device cuda --bf16 --cuda-graphs --json \
    >"$R/info-$net-graphs.json" 2>>"$R/info-$net.log"
done
COMMON=(--data digits32 --data-split train --process edm --net ddpmpp-small --batch 256 --steps 600 --lr 1e-3
  --lr-warmup 200 --ckpt-every 600 --log-every 10 --grid-images 16 --quiet)
for s in 0 1; do
  $FD train "${COMMON[@]}" --seed $s --precision fp32 --no-compile --no-channels-last --run-dir "$R/fp32-s$s" \
    >"$R/fp32-s$s.log" 2>&1 &
  $FD train "${COMMON[@]}" --seed $s --precision bf16 --no-compile --no-channels-last --run-dir "$R/bf16-s$s" \
    >"$R/bf16-s$s.log" 2>&1 &
  $FD train "${COMMON[@]}" --seed $s --precision bf16 --compile --channels-last --run-dir "$R/fast-s$s" \
    >"$R/fast-s$s.log" 2>&1 &
done
wait
tar czf "$OUT/perf.tgz" --exclude='*.safetensors' "$R"
tail -n 3 "$R"/*.log
