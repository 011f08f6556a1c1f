#!/bin/bash
# real-model plan addendum 9's runs (code: the detached worktree /work/wt/runW); lane given as $1 (P or G):
# each lane waits for one lane of axis addendum 6's queue to end (a for P, b for G), then runs seeds 0 and 1
cd /work/wt/runW
P=/work/main/.venv/bin/python
L=$([ "$1" = P ] && echo a || echo b)
until grep -q "lane $L done" /work/main/benchmarks/results/axis/i21i_queue_$L.log 2>/dev/null; do sleep 20; done
touch /work/wt/notes/REALMODEL_RUNNING
C="benchmarks/real_model_check.py --depth-only --layers 36 --steps 100 --batch-size 2 --eval-windows 4 --gen-tokens 16 --skip cli --skip callback --plain-warmup 10 --eval-every 10"
for S in 0 1; do
  echo "== W $1 s$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  if [ "$1" = P ]; then
    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 2 $P $C --seed $S --plain-lr 3e-5 --json real_model_check_W_P_s$S.json > W_P_s$S.log 2>&1
  else
    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 2 $P $C --seed $S --plain-start gstack --plain-lr 3e-5 --json real_model_check_W_G_s$S.json > W_G_s$S.log 2>&1
  fi
  echo "   rc $? $(date -u +%H:%M:%S)"
done
echo "== lane $1 done $(date -u +%H:%M:%S)"
