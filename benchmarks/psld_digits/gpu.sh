#!/usr/bin/env bash
# Issue 20 on one GPU, PSLD: train a digits32 PSLD model (ddpmpp-small, HSM, train split, 1,200 steps of 256, the
# CLI's defaults otherwise), then teleport.py --quick (the deterministic PSLD samplers from the prior and teleported to
# t = 0.3, against SSCS 100) and the fitted-grid table teleported to t = 0.3 (`bench samplers --teleport 0.3`).
# Usage: OUT=dir bash benchmarks/psld_digits/gpu.sh
set -euo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD FASTDIFFUSION_GIT_COMMIT=${FASTDIFFUSION_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
run=/tmp/runs/psld
rm -rf "$run"
start=$(date +%s)
python -m fastdiffusion.cli train --data digits32 --data-split train --process psld --net ddpmpp-small --batch 256 \
    --steps ${STEPS:-1200} --ckpt-every ${STEPS:-1200} --run-dir "$run" --quiet > "$OUT/train-psld.log" 2>&1
cp "$run/config.json" "$OUT/config-psld.json"
echo "trained in $(( $(date +%s) - start )) s"
python benchmarks/psld_digits/teleport.py "$run" --quick --out "$OUT/teleport_gpu.json" > "$OUT/teleport_gpu.log" 2>&1
echo "teleport.py done at $(( $(date +%s) - start )) s"
python -m fastdiffusion.cli bench samplers "$run" --teleport 0.3 --samplers psld-conj,csps-d --nfe 5,10 \
    --schedules quadratic,time-uniform,model --out /tmp/teleport_table > "$OUT/teleport_table.log" 2>&1
tar -C /tmp/teleport_table -czf "$OUT/teleport_table.tar.gz" .
echo "teleport table done at $(( $(date +%s) - start )) s"
