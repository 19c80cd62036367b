#!/usr/bin/env bash
# Session 16, CPU: learned solver parameters (`--schedules learned`, samplers.learned) against the grid fitted by
# Nelder-Mead ('model') and the fixed log-SNR and Karras grids, for dpmpp-2m at NFE 4 and 5 on the CPU demo model
# (`fastdiffusion train --preset demo --run-dir /tmp/demo-run`), from a `git archive` export run from inside it.
# Usage: SRC=/tmp/export SHA=<commit> OUT=dir bash benchmarks/samplers_trained/learned_cpu/run.sh
set -euo pipefail
cd "$SRC"
FASTDIFFUSION_GIT_COMMIT=$SHA PYTHONPATH=$SRC OMP_NUM_THREADS=1 python -m fastdiffusion.cli bench samplers \
  /tmp/demo-run --samplers dpmpp-2m --schedules karras,logsnr,model,learned --nfe 4,5 --threads 1 --out "$OUT"
