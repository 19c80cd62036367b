#!/usr/bin/env bash
# Session 15, CPU: bench samplers on the CPU demo model (/tmp/demo-run) before (73d85d4) and after (caf3d36) the
# Nelder-Mead first-simplex fix, both at once, each from a `git archive` export run from inside it.
for which in old:73d85d4cf4258d04f29a7034b578a21668e71157 new:caf3d36ac4832d602ddc717a6c21c3957d452c90; do
  dir=${which%%:*}; sha=${which#*:}
  (cd /tmp/s15/$dir && FASTDIFFUSION_GIT_COMMIT=$sha PYTHONPATH=/tmp/s15/$dir /work/main/.venv/bin/python -m fastdiffusion.cli bench samplers /tmp/demo-run --samplers ipndm,ipndm:order=3,dpmpp-2m --schedules karras,logsnr,model --nfe 4,5 --threads 1 --out /tmp/s15/out-$dir > /tmp/s15/log-$dir.txt 2>&1) &
done
wait
