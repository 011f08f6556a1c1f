#!/bin/bash
# axis plan addendum 4's runs (code: main e0b7189, this detached worktree), one at a time
cd /work/wt/runG
P=/work/main/.venv/bin/python
for PR in demo-depth2 demo-depth4; do for S in 20 21 22; do
  echo "== $PR s$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  OMP_NUM_THREADS=1 nice -n 5 $P -m ligo_fast.apps.demo --preset $PR --seed $S --budgets 1 --methods ligo_lossless,llama_pro,scratch --lossless-width lossless --threads 1 --no-progress --tag s${S}_depth0 --out-dir runs/i21g/${PR}_x1_s$S > runs_${PR}_s$S.log 2>&1
  echo "   rc $?"
done; done
echo "== done $(date -u +%H:%M:%S)"
