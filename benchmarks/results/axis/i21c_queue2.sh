#!/bin/bash
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1
DEADLINE=$(date -u -d "2026-12-06 15:15:00" +%s)
LOG=/work/wt/i21c_snap/runs/queue.log
name=d2_x2_s20_default; dir=/work/wt/i21c_snap
set -- --preset demo-depth2 --seed 20 --budgets 2 --methods ligo_lossless,scratch --lossless-width lossless --threads 1 --no-progress --tag s20_default
left=$((DEADLINE - $(date -u +%s))); start=$(date -u +%H:%M:%S); load=$(cut -d' ' -f1 /proc/loadavg)
echo "$name|$dir|$start|$load|running|$*" >> $LOG
(cd $dir && timeout --signal=TERM $left nice -n 5 $PY -m ligo_fast.apps.demo "$@" --out-dir runs/i21c/$name > runs/i21c_$name.log 2>&1)
rc=$?
echo "$name|$dir|$start|$load|$(date -u +%H:%M:%S)|rc=$rc|$*" >> $LOG
