#!/usr/bin/env bash
# The one prepared GPU check for ligo_fast (H200: Python 3.12, torch 2.11 cu130, triton 3.6, ninja, pybind11,
# no network). Installs nothing. Runs the GPU tests, then the benchmarks; logs and tables go to "$OUT"
# (./out when unset; at most 8 files come back from a lent machine: keep it that way). A short table is
# printed last. Each section has its own time limit, and no section runs past a deadline of BUDGET seconds
# (default 510) after the start, so that the whole script ends inside 9 minutes with its summary printed; a
# section that has no time left is skipped and says so.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#
# Sections: setup | environment | Triton tests | C++ extension | operator step (bf16) | expansion benchmarks
# (bf16) | operator step (fp32) | expansion benchmark (fp32) | summary.
set -uo pipefail
export PYTHONUNBUFFERED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STATUS=0
BUDGET="${BUDGET:-510}"
exec 3>&1  # the script's own stdout, for messages from inside filtered pipelines
note() { printf '\n=== %s (%d s) ===\n' "$*" "$SECONDS"; }
# limit WANT: WANT seconds, or what is left before the deadline (20 s kept for the summary); 0 = skip
limit() {
    local left=$((BUDGET - 20 - SECONDS))
    if [ "$left" -lt 15 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# run WANT CMD...: CMD under ``timeout`` with limit WANT; exit code 124 when skipped or timed out
run() {
    local t
    t=$(limit "$1")
    shift
    if [ "$t" -eq 0 ]; then echo "skipped (no time left before the ${BUDGET} s deadline): $*" >&3; return 124; fi
    timeout "$t" "$@"
}

# --- setup ---------------------------------------------------------------------------------------------
# The package is used from a source tree, not installed. ``ligo_fast.kernels`` lives in ./kernels (setuptools
# package_dir maps it at install time), so run from a temporary copy of the tree with the symlink
# ligo_fast/kernels -> ../kernels: the checkout (and an editable install of it) is left untouched, and files
# that locate siblings through __file__ (csrc/, tests/) find them in the copy.
SRC="$(mktemp -d "${TMPDIR:-/tmp}/ligo_src.XXXXXX")"
trap 'rm -rf "$SRC"' EXIT
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./out -cf - . | tar -C "$SRC" -xf -
[ -e "$SRC/ligo_fast/kernels" ] || ln -s ../kernels "$SRC/ligo_fast/kernels"
[ -e "$SRC/ligo_fast/csrc" ] || ln -s ../csrc "$SRC/ligo_fast/csrc"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
cd "$SRC"

# --- environment ---------------------------------------------------------------------------------------
note environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
run 60 "$PY" - <<'EOF' || STATUS=1
import torch, triton, ligo_fast.kernels.expand as k
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}, "
      f"{torch.cuda.get_device_name()}, interpreted={k.INTERPRETED}")
EOF

# --- Triton tests --------------------------------------------------------------------------------------
# Autotuning off here: the tests check numbers, and each tuned shape would cost compile time.
note "Triton tests (pytest -m gpu)"
LIGO_FAST_AUTOTUNE=0 run 150 "$PY" -m pytest -q -m gpu tests/test_triton_ops.py -p no:cacheprovider \
    2>&1 | tee "$OUT/triton_tests.log" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# --- C++ extension -------------------------------------------------------------------------------------
# JIT-builds csrc/ with the CUDA kernels (a python3.12 GPU image cannot import a _C built elsewhere), runs
# tests/test_cpp_ext.py (GPU tests included), then the multi-tensor vector op vs a per-tensor loop.
note "C++ extension (JIT build + tests/test_cpp_ext.py, bench_ext.py --skip-cpu)"
export LIGO_FAST_CACHE="$SRC/.ligo_fast_cache"
run 200 "$PY" -m pytest -q tests/test_cpp_ext.py -p no:cacheprovider -rs 2>&1 | tee "$OUT/cpp_tests.log" \
    | tail -n 20
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
run 60 "$PY" benchmarks/bench_ext.py --skip-cpu --min-time 0.5 2>&1 | tee "$OUT/bench_ext.log" | grep -E '^\||GPU'
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# --- operator step and expansion benchmarks -------------------------------------------------------------
# Operator step (bench_operator_step.py): BERT-Base shape (6L/512H -> 12L/768H), 256 x 128 tokens, every provider
# (official structure, ligo_fast.grow default / lean off / lean on, compat, plain large model), peak memory per
# provider in its own process; goal: ours-default <= 1.15x a plain large step, no more peak memory.
# Expansion (bench_expand.py): bf16 BERT, then Llama-xl (16L/2048H -> 32L/4096H), every provider, autotuned;
# fp32: BERT only, without torch.compile. Rows print as they are measured, so a timeout loses little. The full
# tables are in the logs (6 files in $OUT, 3 more with GPU_CHECK_DEMO=1: at most 8 come back from a lent machine).
: >"$OUT/bench_expand.log"
: >"$OUT/operator_step.log"
step_bench() {  # step_bench DTYPE WANT ROUNDS
    note "operator step, BERT-Base shape, 256x128 tokens, $1 (bench_operator_step.py)"
    run "$2" "$PY" benchmarks/bench_operator_step.py --device cuda --dtype "$1" --shapes bert --tokens 256x128 \
        --warmup 2 --repeats "$3" --lean-layers "" 2>&1 \
        | tee -a "$OUT/operator_step.log" | grep -E '^\||^- bert|failed|Error'
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "operator step $1: exit $rc"; STATUS=1; }
}
expand_bench() {  # expand_bench DTYPE SHAPES WANT PROVIDERS
    note "expansion benchmark, $2, $1 (bench_expand.py)"
    run "$3" "$PY" benchmarks/bench_expand.py --device cuda --dtype "$1" --shapes "$2" --providers "$4" --rounds 5 \
        2>&1 | tee -a "$OUT/bench_expand.log" | grep -E '^\||measured|differ|failed'
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "bench_expand $1 $2: exit $rc"; STATUS=1; }
}
step_bench bfloat16 150 8
expand_bench bfloat16 bert 100 official,official+compile,torch,triton
expand_bench bfloat16 llama-xl 150 official,official+compile,torch,triton
step_bench float32 150 6
expand_bench float32 bert 60 official,torch,triton

# --- growth savings (optional) -------------------------------------------------------------------------
# GPU_CHECK_DEMO=1: the small GPU preset of the savings experiment (ligo_fast.apps.demo), 4-7 min by a FLOP estimate;
# off by default so the checks above fit one lease with room for a rerun; it runs inside the same deadline, so
# give it time with BUDGET (e.g. BUDGET=1000: then the script needs a machine for ~17 min). Writes 3 files to $OUT.
if [ "${GPU_CHECK_DEMO:-0}" = "1" ]; then
    note "growth savings (python -m ligo_fast.apps.demo --preset gpu-small --device cuda)"
    run 480 "$PY" -m ligo_fast.apps.demo --preset gpu-small --device cuda --no-progress --out-dir "$OUT" \
        2>&1 | tail -n 20
    [ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
fi

# --- summary -------------------------------------------------------------------------------------------
note summary
echo "triton tests: $(grep -E 'passed|failed|skipped|error' "$OUT/triton_tests.log" | tail -n 1)"
echo "| shapes | dtype | mode | provider | median ms | p20 | p80 | TFLOP/s | % peak | roof% | peak extra MiB |"\
     "vs official |"
grep -E '^\| (bert|llama-xl) \| [a-z0-9]+ \| fwd\+bwd' "$OUT/bench_expand.log" | sort -u || true
echo "operator step (BERT-Base shape, 256x128 tokens; goal: ours-default <= 1.15x plain, peak <= plain):"
echo "| shape | tokens | dtype | provider | median ms | p20 | p80 | x official | x plain | peak MiB | state MiB |"\
     "peak x plain |"
grep -E '^\| bert \| 256x128 \| [a-z0-9]+ \| (official|ours-default|ours-lean|plain-large) ' \
    "$OUT/operator_step.log" | cut -d'|' -f1-13 | sed 's/$/|/' || true
grep -E '^- bert 256x128' "$OUT/operator_step.log" || true
echo "total: $SECONDS s"
echo "status: $STATUS (0 = every section passed)"
exit "$STATUS"
