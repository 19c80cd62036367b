#!/usr/bin/env bash
# Issue 21 item 4 on one GPU, one device call: what the GroupNorm rewrite (3791ad1) left stale.
#  1. Loss curves, fast path vs eager fp32 and eager bf16 (perf_gpu.sh's protocol: ddpmpp-small, EDM, digits32 train
#     split, batch 256, 600 steps, two seeds, six runs side by side) -> loss_logs.tgz (log-MODE-sSEED.jsonl) and
#     loss_provenance.json; `python benchmarks/report.py` turns them into loss_curves.json and .png.
#  2. Compiled NCHW against the channels_last fast path, one process (`bench throughput`, EDM's CIFAR-10 DDPM++,
#     batch 512, sampling batch 1024) -> nchw.json.
# Usage: OUT=results bash benchmarks/perf/restale_gpu.sh
set -u
OUT=${OUT:-results}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
R=${TMPDIR:-/tmp}/restale_runs
rm -rf "$R" && mkdir -p "$R"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
FD="python -m fastdiffusion.cli"
COMMON=(--data digits32 --data-split train --process edm --net ddpmpp-small --batch 256 --steps 600 --lr 1e-3
  --lr-warmup 200 --ckpt-every 600 --log-every 10 --grid-images 16 --quiet)
for s in 0 1; do
  timeout 240 $FD train "${COMMON[@]}" --seed $s --precision fp32 --no-compile --no-channels-last \
    --run-dir "$R/fp32-s$s" >"$R/fp32-s$s.log" 2>&1 &
  timeout 240 $FD train "${COMMON[@]}" --seed $s --precision bf16 --no-compile --no-channels-last \
    --run-dir "$R/bf16-s$s" >"$R/bf16-s$s.log" 2>&1 &
  timeout 240 $FD train "${COMMON[@]}" --seed $s --precision bf16 --compile --channels-last \
    --run-dir "$R/fast-s$s" >"$R/fast-s$s.log" 2>&1 &
done
wait
python -c "import json, sys; from fastdiffusion.bench.provenance import provenance
json.dump({**provenance('cuda'), 'command': 'bash benchmarks/perf/restale_gpu.sh (fastdiffusion train, 6 runs side by side)'}, open(sys.argv[1], 'w'), indent=1)" "$OUT/loss_provenance.json"
for m in fp32 bf16 fast; do for s in 0 1; do cp "$R/$m-s$s/log.jsonl" "$R/log-$m-s$s.jsonl"; done; done
(cd "$R" && tar czf "$OUT/loss_logs.tgz" log-*.jsonl ./*.log)
echo "loss curves: done"
timeout 300 python -m fastdiffusion.bench.throughput --batch 512 --sample-batch 1024 \
  --modes fast,fast+channels_last=false --out "$OUT/nchw.json" > "$OUT/nchw.log" 2>&1
echo "nchw: rc $?"
