#!/usr/bin/env bash
# One digits32 model of issue 20 (edm, fdm-edm or cunet; train split, 1,200 steps of 256 unless STEPS / BATCH say
# otherwise, the CLI's defaults otherwise) into /tmp/runs/MODEL, its log and config into DIR.
# Usage: bash benchmarks/samplers_trained/train.sh MODEL DIR   (from the repository root, PYTHONPATH set)
set -euo pipefail
m=$1 dir=$2
case $m in
  edm) args="--process edm --net ddpmpp-small" ;;
  fdm-edm) args="--process fdm-edm --net ddpmpp-small" ;;
  cunet) args="--process edm --net cunet-small-euler2" ;;
  *) echo "train.sh: unknown model $m (edm, fdm-edm or cunet)" >&2; exit 2 ;;
esac
run=/tmp/runs/$m
rm -rf "$run"
start=$(date +%s)
python -m fastdiffusion.cli train --data digits32 --data-split train $args --batch ${BATCH:-256} \
    --steps ${STEPS:-1200} --ckpt-every ${STEPS:-1200} --run-dir "$run" --quiet > "$dir/train-$m.log" 2>&1
cp "$run/config.json" "$dir/config-$m.json"
echo "$m trained in $(( $(date +%s) - start )) s"
