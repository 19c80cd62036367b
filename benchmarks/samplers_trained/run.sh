#!/usr/bin/env bash
# Issue 20 on one GPU: train the three digits32 models of the issue (train split, 1,200 steps of 256, the CLI's
# defaults otherwise), then the trained-model sampler table of each (`fastdiffusion bench samplers MODEL`):
# every sampler x schedule (karras, logsnr, the mixture-tuned table, fitted to the model) x NFE, FD-digits of 1,000
# samples (seeds 100000-100999) with RMS to Heun-35, last sigma and HF energy; the per-model schedules are fitted on
# seeds 1000000-1000255. Usage: OUT=dir bash benchmarks/samplers_trained/run.sh [edm fdm-edm cunet]
set -euo pipefail
OUT=${OUT:-bench-out}
RES=/tmp/samplers_trained  # many files: packed into one archive under $OUT at the end (the device returns 8)
mkdir -p "$OUT" "$RES"
export PYTHONPATH=$PWD FASTDIFFUSION_GIT_COMMIT=${FASTDIFFUSION_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
models=${*:-"edm fdm-edm cunet"}
for m in $models; do
  start=$(date +%s)
  bash benchmarks/samplers_trained/train.sh "$m" "$RES"
  run=/tmp/runs/$m
  python -m fastdiffusion.cli bench samplers "$run" --tune-nfe ${TUNE_NFE:-4,5} --out "$RES/$m" ${BENCH_ARGS:-} \
      > "$RES/bench-$m.log" 2>&1
  echo "$m benchmarked in $(( $(date +%s) - start )) s"
  tar -C "$RES" -czf "$OUT/samplers_trained.tar.gz" .
done
