#!/usr/bin/env bash
# One device call (2 x H200) for issue 6 (DSNO) and the PSLD digits model of issue 4.
#   GPU 1: PSLD training + sampler sweep (benchmarks/digits32/train_eval.py), then the DSNO ablation students.
#   GPU 0: trajectory throughput and the trajectory set, the main student alone, then the evaluation.
# Usage: TEACHER=teacher_edm.safetensors OUT=results bash benchmarks/dsno/dsno_gpu.sh
# (PSLD_ARGS, TRAJ_ARGS, EVAL_ARGS add flags to the three Python steps, e.g. to smoke-test it on a CPU at toy size.)
set -u
OUT=${OUT:-results}
TEACHER=${TEACHER:?the EDM teacher model file}
R=runs/dsno
mkdir -p "$R" "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
STUDENT_S=${STUDENT_S:-300}
MAIN_STEPS=${MAIN_STEPS:-2500}
ABL_STEPS=${ABL_STEPS:-900}
PSLD_SWEEP="em:10;sscs:10;csps-d:10;csps-s:10;sps-s:10;em:20;sscs:20;csps-d:20;csps-s:20;sps-s:20"
PSLD_SWEEP="$PSLD_SWEEP;em:50;sscs:50;csps-d:50;csps-s:50;sps-s:50"

CUDA_VISIBLE_DEVICES=1 python benchmarks/digits32/train_eval.py --process psld --eval-sampler csps-d --eval-nfe 50 \
  --eval-every-kimg 80 --deadline-s 380 --sweep-deadline-s 480 --sweep "$PSLD_SWEEP" --out "$R/psld.json" ${PSLD_ARGS:-} \
  >"$R/psld.log" 2>&1 &
PSLD=$!

CUDA_VISIBLE_DEVICES=0 python benchmarks/dsno/bench.py traj --teacher "$TEACHER" --out "$R/traj" \
  --json "$R/traj_speed.json" ${TRAJ_ARGS:-} >"$R/traj.log" 2>&1

student() {  # student GPU NAME STEPS BATCH ARGS...
  local gpu=$1 name=$2 steps=$3 batch=$4
  shift 4
  CUDA_VISIBLE_DEVICES=$gpu timeout "$STUDENT_S" python -m fastdiffusion.cli distill train "$R/traj" \
    --run-dir "$R/$name" --steps "$steps" --batch "$batch" --lr 5e-4 --lr-warmup 100 --ema-halflife-kimg 20 \
    --holdout 1000 --ckpt-every 150 --keep-ckpts 1 --log-every 50 --quiet "$@" >"$R/$name.log" 2>&1 &
}
student 0 main "$MAIN_STEPS" 128 --times 4 --modes 2
for spec in "m4k2 4 2" "m4k1 4 1" "m4k3 4 3" "m2k2 2 2" "m1-no-timeconv 1 0"; do
  set -- $spec
  student 1 "$1" "$ABL_STEPS" 64 --times "$2" --modes "$3"
done
wait $(jobs -p | grep -v "^$PSLD\$")
for s in main m4k2 m4k1 m4k3 m2k2 m1-no-timeconv; do
  ARGS+=(--student "$s=$R/$s")
done
CUDA_VISIBLE_DEVICES=0 timeout 150 python benchmarks/dsno/bench.py eval --teacher "$TEACHER" "${ARGS[@]}" \
  --json "$R/eval.json" ${EVAL_ARGS:-} >"$R/eval.log" 2>&1
wait
tar czf "$OUT/dsno.tgz" --exclude='*.safetensors' --exclude="$R/traj" "$R"
tail -n 4 "$R"/*.log
