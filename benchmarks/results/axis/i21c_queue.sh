#!/bin/bash
# one run at a time; each killed at 15:15 UTC; log: runs/queue.log (name|dir|start|load|end|rc|command)
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1
DEADLINE=$(date -u -d "2026-12-06 15:15:00" +%s)
LOG=/work/wt/i21c_snap/runs/queue.log
run() {  # name dir args...
  local name=$1 dir=$2; shift 2
  local now=$(date -u +%s); local left=$((DEADLINE - now))
  if [ $left -le 60 ]; then echo "$name|$dir|not started (past 15:14)" >> $LOG; return; fi
  local start=$(date -u +%H:%M:%S) load=$(cut -d' ' -f1 /proc/loadavg)
  echo "$name|$dir|$start|$load|running|$*" >> $LOG
  (cd $dir && timeout --signal=TERM $left nice -n 5 $PY -m ligo_fast.apps.demo "$@" --out-dir runs/i21c/$name > runs/i21c_$name.log 2>&1)
  local rc=$?
  echo "$name|$dir|$start|$load|$(date -u +%H:%M:%S)|rc=$rc|$*" >> $LOG
}
S1=/work/wt/i21c_snap; S2=/work/wt/i21c_snap_plan
D="--budgets 1 --methods ligo_lossless,scratch --lossless-width lossless --threads 1 --no-progress"
for s in 20 21 22; do
  run d2_x1_s${s}_default $S1 --preset demo-depth2 --seed $s $D --tag s${s}_default
  run w_x1_s${s}_default $S1 --preset demo-width --seed $s $D --tag s${s}_default
  run d4_x1_s${s}_default $S1 --preset demo-depth4 --seed $s $D --tag s${s}_default
  run both_x1_s${s}_default $S1 --preset demo --seed $s $D --tag s${s}_default
done
for s in 21 22; do
  run d4_x1_s$s $S2 --preset demo-depth4 --seed $s --budgets 1 --methods ligo,ligo_lossless,gstack,llama_pro,scratch --threads 1 --no-progress --tag s$s
done
for s in 21 22; do
  run both_x1_s$s $S2 --preset demo --seed $s --budgets 1 --methods ligo,ligo_lossless,lossless,gstack,scratch --threads 1 --no-progress --tag s$s
done
for s in 21 22; do
  run w_x2_s$s $S2 --preset demo-width --seed $s --budgets 2 --methods ligo,ligo_lossless,hypercloning,stack,scratch --threads 1 --no-progress --tag s$s
done
echo "queue done $(date -u +%H:%M:%S)" >> $LOG
