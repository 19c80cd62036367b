#!/usr/bin/env bash
# Issue 18's GPU figures of the data pipeline, one device call (one GPU), within BUDGET_S seconds:
#   loader_gpu.json         the loader alone from a 50k-image PNG zip, and ddpmpp-small training at batch 512 from that
#                           zip against the same images in memory (benchmarks/data/loader_bench.py --parts loader train)
#   loader_gpu_memory.json  peak GPU memory of EDM's CIFAR-10 network at batch 512 with 1,797 and 200,000 images
#   throughput_{now,prev}.json  `bench throughput --modes fast` of this tree and, if PREV_SRC names a source tree of the
#                           commit before the data pipeline (git archive 2a0047b | tar -x -C PREV_SRC), of that one
# Usage: OUT=res [PREV_SRC=prev] bash benchmarks/data/gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
END=$(($(date +%s) + ${BUDGET_S:-570}))
left() { echo $((END - $(date +%s))); }
run() {  # run NAME CMD...: while time is left, its log in $OUT/NAME.log
  local name=$1
  shift
  [ "$(left)" -gt 60 ] && timeout "$(left)" "$@" >"$OUT/$name.log" 2>&1
  echo "$name rc=$? $(date +%T)"
}
run loader_gpu python benchmarks/data/loader_bench.py --parts loader train --out "$OUT/loader_gpu.json"
run loader_gpu_memory python benchmarks/data/loader_bench.py --parts gpu_memory --out "$OUT/loader_gpu_memory.json"
T=(-m fastdiffusion.bench.throughput --modes fast --batch 512 --sample-batch 1024)
run throughput_now python "${T[@]}" --out "$OUT/throughput_now.json"
if [ -n "${PREV_SRC:-}" ]; then  # `python -m` looks in the working directory first: run from the other tree
  (cd "$PREV_SRC" && run throughput_prev python "${T[@]}" --out "$OUT/throughput_prev.json")
fi
