#!/usr/bin/env bash
# Session 14, CPU: is the sharpness-aware fit (--hf-tolerance 0.1, the EDM family's default) good for PSLD models too?
# The teleported fitted-grid table of the CPU PSLD demo model (/tmp/demo-psld = `fastdiffusion train --preset demo
# --process psld`, ddpmpp-tiny, digits16, HSM) with --hf-tolerance off and 0.1, both at once, from a `git archive`
# export of commit SRC_COMMIT in SRC.
# Usage: SRC=dir SRC_COMMIT=sha OUT=dir bash benchmarks/psld_digits/hf_tolerance_cpu/run.sh
set -u
mkdir -p "$OUT"
cd "$SRC"
export FASTDIFFUSION_GIT_COMMIT=$SRC_COMMIT PYTHONPATH=$SRC
for tol in off 0.1; do
  /work/main/.venv/bin/python -m fastdiffusion.cli bench samplers /tmp/demo-psld --teleport 0.3 --samplers csps-d \
      --nfe 5,10 --schedules time-uniform,model --max-evals 40 --batch 500 --threads 1 --hf-tolerance $tol \
      --out "$OUT/tol-$tol" > "$OUT/log-$tol.txt" 2>&1 &
done
wait
