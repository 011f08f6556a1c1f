#!/bin/bash
# addendum 3: grow()'s default at the reverted lr rule; one run at a time; each killed at 00:15 UTC;
# log: runs/queue.log (name|start|load|end|rc|command)
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1
DEADLINE=$(date -u -d "2026-12-07 00:15:00" +%s)
S=/work/wt/i21e_snap
LOG=$S/runs/queue.log
run() {  # name args...
  local name=$1; shift
  local now=$(date -u +%s); local left=$((DEADLINE - now))
  if [ $left -le 60 ]; then echo "$name|not started (past 00:14)" >> $LOG; return; fi
  local start=$(date -u +%H:%M:%S) load=$(cut -d' ' -f1 /proc/loadavg)
  echo "$name|$start|$load|running|$*" >> $LOG
  (cd $S && timeout --signal=TERM $left nice -n 5 $PY -m ligo_fast.apps.demo "$@" --out-dir runs/i21e/$name > runs/i21e_$name.log 2>&1)
  local rc=$?
  echo "$name|$start|$load|$(date -u +%H:%M:%S)|rc=$rc|$*" >> $LOG
}
D="--methods ligo_lossless,scratch --lossless-width lossless --threads 1 --no-progress"
for s in 20 21 22; do
  for p in demo-depth2 demo-width demo-depth4 demo; do
    run ${p}_x1_s$s --preset $p --seed $s --budgets 1 $D --tag s${s}_sqrt
  done
done
for p in demo demo-width demo-depth2; do
  for s in 20 21 22; do
    run ${p}_x2_s$s --preset $p --seed $s --budgets 2 $D --tag s${s}_sqrt
  done
done
echo "queue done $(date -u +%H:%M:%S)" >> $LOG
