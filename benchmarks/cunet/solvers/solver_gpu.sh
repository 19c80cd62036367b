#!/usr/bin/env bash
# One device call (1 x H200) for issue 7's batch-1 latency: cheaper ODE solvers trained as such.
#  1. `fastdiffusion info --cuda-graphs` latency for ddpmpp-small and cunet-small with RK4 x 1 (the default),
#     midpoint x 1 and Euler x 2, on an idle GPU.
#  2. cunet-small trained with midpoint x 1 and with Euler x 2 (same setup as benchmarks/digits32/study_gpu.sh),
#     side by side for TRAIN_S seconds each, FD-digits every 80 kimg.
# Usage: OUT=results bash benchmarks/cunet/solvers/solver_gpu.sh
# The recorded run (commit 8a233e8, `timeout 450`) was stopped by that limit during the training (the four CUDA-graph
# compilations took ~4 minutes) before the tar; its files were fetched from the still-warm machine by a second
# command. Each run's JSON is rewritten after every evaluation, so nothing measured was lost.
set -u
OUT=${OUT:-results}
R=runs/cunet-solvers
mkdir -p "$R" "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
TRAIN_S=${TRAIN_S:-270}
info() {  # info NAME NET [--net-opt ...]
  local name=$1
  shift
  python -m fastdiffusion.cli info --net "$@" --channels 1 --resolution 32 --device cuda --bf16 --cuda-graphs \
    --json >"$R/info-$name.json" 2>"$R/info-$name.log"
}
info ddpmpp-small ddpmpp-small
info cunet-rk4x1 cunet-small
info cunet-midpointx1 cunet-small --net-opt solver=midpoint
info cunet-eulerx2 cunet-small --net-opt solver=euler --net-opt solver_steps=2
for spec in "midpointx1 solver=midpoint solver_steps=1" "eulerx2 solver=euler solver_steps=2"; do
  set -- $spec
  CUDA_VISIBLE_DEVICES=0 python benchmarks/digits32/train_eval.py --process edm --net cunet-small \
    --net-opt "$2" --net-opt "$3" --deadline-s "$TRAIN_S" --eval-every-kimg 80 --out "$R/cunet-$1.json" \
    >"$R/cunet-$1.log" 2>&1 &
done
wait
tar czf "$OUT/solvers.tgz" "$R"
tail -n 2 "$R"/*.log
