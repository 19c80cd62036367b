#!/usr/bin/env bash
# DSNO at a CPU budget (issue 20, item 5): the `make demo` teacher (FDM-EDM ddpmpp-tiny, 16-px digits, 1,200 steps)
# -> 2,000 heun-35 trajectories -> a student of 300 steps of batch 64, the CLI's defaults otherwise -> FD-digits of
# 1,000 samples (seeds 100000-100999, which no trajectory uses) for the student and the teacher.
# Usage: TEACHER=runs/demo OUT=/tmp/dsno_cpu bash benchmarks/dsno_cpu/run.sh   (writes results.json here)
set -eu
TEACHER=${TEACHER:?the teacher run directory (make demo)}
OUT=${OUT:-/tmp/dsno_cpu}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
FD=${FASTDIFFUSION:-fastdiffusion}
PY=${PYTHON:-python}
EVAL=(--metrics fd-digits --n 1000 --seeds 100000-100999 --device cpu --quiet)
mkdir -p "$OUT"
timed() {  # timed NAME COMMAND...: wall seconds into $OUT/NAME.time; a step whose .time exists is done (skipped)
  local name=$1 t0
  shift
  [ -e "$OUT/$name.time" ] && return 0
  t0=$(date +%s.%N)
  "$@" >"$OUT/$name.log" 2>&1
  echo "$(date +%s.%N) - $t0" | bc >"$OUT/$name.time"
}
timed traj $FD distill trajectories "$TEACHER" --seeds 0-1999 --out "$OUT/traj" --device cpu --quiet
# The recipe: the issue's budget, 300 steps of batch 64, the CLI's defaults otherwise (lr 2e-4, M = 4, K = 2, L1).
timed train $FD distill train "$OUT/traj" --run-dir "$OUT/student" --steps 300 --batch 64 --ckpt-every 50 \
  --device cpu --quiet
timed eval_student $FD eval "$OUT/student/student.safetensors" "${EVAL[@]}" --out "$OUT/eval_student.json"
# The teacher with its default sampler, heun at 35 NFE: also the trajectories' sampler.
timed eval_teacher $FD eval "$TEACHER" "${EVAL[@]}" --out "$OUT/eval_teacher.json"
# Variant: the learning rate of docs/guide.md's GPU example.
timed train_lr5e-4 $FD distill train "$OUT/traj" --run-dir "$OUT/student_lr5e-4" --steps 300 --batch 64 --lr 5e-4 \
  --ckpt-every 50 --device cpu --quiet
timed eval_student_lr5e-4 $FD eval "$OUT/student_lr5e-4/student.safetensors" "${EVAL[@]}" \
  --out "$OUT/eval_student_lr5e-4.json"
$PY "$(dirname "$0")/collect.py" --out-dir "$OUT" --teacher "$TEACHER" --json "$(dirname "$0")/results.json" ${COLLECT_ARGS:-}
