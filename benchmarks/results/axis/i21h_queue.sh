#!/bin/bash
# axis plan addendum 5's runs (code: main 5b73234, this detached worktree); lane given as $1 (a or b)
cd /work/wt/runH
P=/work/main/.venv/bin/python
run() { PR=$1; S=$2
  echo "== $PR s$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  OMP_NUM_THREADS=1 nice -n 5 $P -m ligo_fast.apps.demo --preset $PR --seed $S --budgets 4 --methods ligo_lossless,gstack,scratch --lossless-width lossless --threads 1 --no-progress --tag s${S}_depth0_x4 --out-dir runs/i21h/${PR}_x4_s$S > runs_${PR}_x4_s$S.log 2>&1
  echo "   rc $? $(date -u +%H:%M:%S)"
}
if [ "$1" = a ]; then run demo-depth4 20; run demo-depth4 21; else run demo-depth2 21; run demo-depth2 22; run demo-depth4 22; fi
echo "== lane $1 done $(date -u +%H:%M:%S)"
