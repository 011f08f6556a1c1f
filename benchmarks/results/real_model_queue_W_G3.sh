#!/bin/bash
# real-model plan addendum 9's secondary arm G3 (G_stack's start at 3e-4, seed 0), after lane P ends
cd /work/wt/runW
P=/work/main/.venv/bin/python
until grep -q "lane P done" /work/main/benchmarks/results/real_model_queue_W_P.log 2>/dev/null; do sleep 20; done
C="benchmarks/real_model_check.py --depth-only --layers 36 --steps 100 --batch-size 2 --eval-windows 4 --gen-tokens 16 --skip cli --skip callback --plain-warmup 10 --eval-every 10"
echo "== W G3 s0 $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 2 $P $C --seed 0 --plain-start gstack --plain-lr 3e-4 --json real_model_check_W_G3_s0.json > W_G3_s0.log 2>&1
echo "   rc $? $(date -u +%H:%M:%S)"
