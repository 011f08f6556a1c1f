#!/bin/bash
# axis plan addendum 6's runs (code: the detached worktree /work/wt/runI); lane given as $1 (a or b)
cd /work/wt/runI
P=/work/main/.venv/bin/python
run() { PR=$1; B=$2; S=$3
  echo "== $PR s$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  OMP_NUM_THREADS=1 nice -n 5 $P -m ligo_fast.apps.demo --preset $PR --seed $S --budgets 4 --methods ligo_lossless,$B,scratch --lossless-width lossless --threads 1 --no-progress --tag s${S}_default_x4 --out-dir runs/i21i/${PR}_x4_s$S > runs_${PR}_x4_s$S.log 2>&1
  echo "   rc $? $(date -u +%H:%M:%S)"
}
if [ "$1" = a ]; then run demo gstack 20; run demo gstack 21
else run demo-width hypercloning 20; run demo-width hypercloning 21; run demo-width hypercloning 22; run demo gstack 22; fi
echo "== lane $1 done $(date -u +%H:%M:%S)"
