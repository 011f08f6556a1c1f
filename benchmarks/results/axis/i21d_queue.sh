#!/bin/bash
# Issue 21, addendum 2: the runs of axis_savings_plan_addendum2.md in two streams (at most two runs at once).
# Usage (from the snapshot worktree, cwd there): bash benchmarks/results/axis/i21d_queue.sh A|B
# Stream A runs queue A, then takes the next unclaimed run of queues B, C; stream B runs queues B, C. A run is
# claimed with mkdir (each runs once). A run starts only if now + its estimate <= 17:55 UTC, else it is recorded as
# not started and the stream tries the next; every run is killed at 17:58 UTC (timeout). Log: runs/i21d_queue.log
# (name|start|load|end|status|args).
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1
LAST_END=$(date -u -d "2026-12-06 17:55:00" +%s)
KILL_AT=$(date -u -d "2026-12-06 17:58:00" +%s)
SNAP=$(pwd)
LOG=$SNAP/runs/i21d_queue.log
CLAIMS=$SNAP/runs/i21d_claims
mkdir -p "$CLAIMS" "$SNAP/runs/i21d"
COMMON="--threads 1 --no-progress"
run() {  # name estimate_min args...
  local name=$1 est=$2; shift 2
  mkdir "$CLAIMS/$name" 2>/dev/null || return 0
  local now=$(date -u +%s)
  if [ $((now + est * 60)) -gt $LAST_END ]; then
    echo "$name|$(date -u +%H:%M:%S)|-|-|not started (estimate ${est} min past 17:55)|$*" >> "$LOG"; return 0
  fi
  local start=$(date -u +%H:%M:%S) load=$(cut -d' ' -f1 /proc/loadavg)
  echo "$name|$start|$load|-|running|$*" >> "$LOG"
  timeout --signal=TERM $((KILL_AT - now)) nice -n 5 $PY -m ligo_fast.apps.demo "$@" $COMMON \
    --out-dir runs/i21d/$name > runs/i21d_$name.log 2>&1
  local rc=$?
  echo "$name|$start|$load|$(date -u +%H:%M:%S)|rc=$rc|$*" >> "$LOG"
}
queue_a() {
  local A="--budgets 1 --methods ligo,ligo_lossless,scratch --ligo-lr 2e-3 --ligo-train width"
  for s in 21 22; do run ab4_w_width_s$s 8 --preset demo-width --seed $s $A --tag s${s}_train-width; done
  for s in 20 21 22; do run ab4_both_width_s$s 13 --preset demo --seed $s $A --tag s${s}_train-width; done
}
queue_bc() {  # budget, estimates of the four presets (minutes)
  local b=$1 e1=$2 e2=$3 e3=$4 e4=$5; shift 5
  local X="--budgets $b --lossless-width lossless"
  for s in "$@"; do
    run d2_x${b}_s${s}_default $e1 --preset demo-depth2 --seed $s $X --methods ligo_lossless,gstack,llama_pro,scratch --tag s${s}_default_x$b
    run w_x${b}_s${s}_default $e2 --preset demo-width --seed $s $X --methods ligo_lossless,hypercloning,scratch --tag s${s}_default_x$b
    run d4_x${b}_s${s}_default $e3 --preset demo-depth4 --seed $s $X --methods ligo_lossless,gstack,llama_pro,scratch --tag s${s}_default_x$b
    run both_x${b}_s${s}_default $e4 --preset demo --seed $s $X --methods ligo_lossless,lossless,gstack,scratch --tag s${s}_default_x$b
  done
}
[ "$1" = A ] && queue_a
queue_bc 2 9 10 22 24 20 21 22
queue_bc 4 18 20 44 48 20
echo "stream $1 done $(date -u +%H:%M:%S)" >> "$LOG"
