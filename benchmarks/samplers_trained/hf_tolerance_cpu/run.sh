# Session 13, CPU: bench samplers on the CPU demo model (/tmp/demo-run = `fastdiffusion train --preset demo`, FDM-EDM
# ddpmpp-tiny, digits16) with and without --hf-tolerance 0.1, both at once from a `git archive` export of e081306.
cd /tmp/exp_hf2/src
export FASTDIFFUSION_GIT_COMMIT=e081306f8b8c1e92ab7710da9d1a641e3d6c6260 PYTHONPATH=/tmp/exp_hf2/src
for tol in 0.1 none; do
  extra=""; [ $tol != none ] && extra="--hf-tolerance $tol"
  /work/main/.venv/bin/python -m fastdiffusion.cli bench samplers /tmp/demo-run --samplers ipndm,dpmpp-2m --schedules karras,logsnr,model --nfe 4,5 --threads 1 $extra --out /tmp/exp_hf2/out-$tol > /tmp/exp_hf2/log-$tol.txt 2>&1 &
done
wait
