#!/bin/bash
# addendum 8's runs, in order (code: main 1e3a65b, this detached worktree)
cd /work/wt/runT
touch /work/wt/notes/REALMODEL_RUNNING
P=/work/main/.venv/bin/python
C="benchmarks/real_model_check.py --depth-only --layers 36 --steps 10 --batch-size 8 --eval-windows 4 --gen-tokens 16 --skip cli --skip callback"
for S in 0 1; do
  echo "== T s$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 2 $P $C --seed $S --operator-run --plain-lr 3e-5 --json real_model_check_T_s$S.json > T_s$S.log 2>&1
  echo "== U s$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 2 $P $C --seed $S --plain-start gstack --plain-lr 3e-5 --json real_model_check_U_s$S.json > U_s$S.log 2>&1
done
echo "== V s0 $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 2 $P $C --seed 0 --operator-run --operator-lr 3e-4 --json real_model_check_V_s0.json > V_s0.log 2>&1
echo "== done $(date -u +%H:%M:%S)"
rm -f /work/wt/notes/REALMODEL_RUNNING
