#!/usr/bin/env bash
# The one prepared GPU check for ligo_fast (H200: Python 3.12, torch 2.11 cu130, triton 3.6, ninja, pybind11,
# no network). Installs nothing. Runs the GPU tests, then the benchmarks; logs and tables go to "$OUT"
# (./out when unset; at most 8 files come back from a lent machine: keep it that way). A short table is
# printed last. Each section has its own time limit so that the whole script stays well under 8 minutes
# and the summary always prints.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#
# Sections: setup | environment | Triton tests | C++ extension | Triton benchmarks | summary.
set -uo pipefail
export PYTHONUNBUFFERED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STATUS=0
note() { printf '\n=== %s ===\n' "$*"; }

# --- setup ---------------------------------------------------------------------------------------------
# The package is used from a source tree, not installed. ``ligo_fast.kernels`` lives in ./kernels (setuptools
# package_dir maps it at install time), so run from a temporary copy of the tree with the symlink
# ligo_fast/kernels -> ../kernels: the checkout (and an editable install of it) is left untouched, and files
# that locate siblings through __file__ (csrc/, tests/) find them in the copy.
SRC="$(mktemp -d "${TMPDIR:-/tmp}/ligo_src.XXXXXX")"
trap 'rm -rf "$SRC"' EXIT
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./out -cf - . | tar -C "$SRC" -xf -
[ -e "$SRC/ligo_fast/kernels" ] || ln -s ../kernels "$SRC/ligo_fast/kernels"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
cd "$SRC"

# --- environment ---------------------------------------------------------------------------------------
note environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" - <<'EOF' || STATUS=1
import torch, triton, ligo_fast.kernels.expand as k
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}, "
      f"{torch.cuda.get_device_name()}, interpreted={k.INTERPRETED}")
EOF

# --- Triton tests --------------------------------------------------------------------------------------
# Autotuning off here: the tests check numbers, and each tuned shape would cost compile time.
note "Triton tests (pytest -m gpu)"
LIGO_FAST_AUTOTUNE=0 timeout 150 "$PY" -m pytest -q -m gpu tests/test_triton_ops.py -p no:cacheprovider \
    2>&1 | tee "$OUT/triton_tests.log" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# --- C++ extension -------------------------------------------------------------------------------------
# JIT-builds csrc/ with the CUDA kernels (a python3.12 GPU image cannot import a _C built elsewhere), runs
# tests/test_cpp_ext.py (GPU tests included), then the multi-tensor vector op vs a per-tensor loop.
note "C++ extension (JIT build + tests/test_cpp_ext.py, bench_ext.py --skip-cpu)"
export LIGO_FAST_CACHE="$SRC/.ligo_fast_cache"
timeout 300 "$PY" -m pytest -q tests/test_cpp_ext.py -p no:cacheprovider -rs 2>&1 | tee "$OUT/cpp_tests.log" \
    | tail -n 20
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
timeout 90 "$PY" benchmarks/bench_ext.py --skip-cpu --min-time 0.5 2>&1 | tee "$OUT/bench_ext.log" | grep -E '^\||GPU'
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# --- Triton benchmarks ---------------------------------------------------------------------------------
# bf16: BERT, then Llama (separate runs: a timeout in one keeps the other's rows), every provider, autotuned.
# fp32: BERT only, without torch.compile (time). Rows print as they are measured, so a timeout loses little.
note "benchmarks (bench_expand.py)"
: >"$OUT/bench_expand.log"
for run in "bfloat16 bert 100 official,official+compile,torch,triton" \
           "bfloat16 llama 150 official,official+compile,torch,triton" \
           "float32 bert 60 official,torch,triton"; do
    set -- $run
    timeout "$3" "$PY" benchmarks/bench_expand.py --device cuda --dtype "$1" --shapes "$2" --providers "$4" \
        --out "$OUT/bench_expand.md" 2>&1 | tee -a "$OUT/bench_expand.log" | grep -E '^\||measured|differ|failed'
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "bench_expand $1 $2: exit $rc"; STATUS=1; }
done

# --- growth savings (optional) -------------------------------------------------------------------------
# GPU_CHECK_DEMO=1: the small GPU preset of the savings experiment (ligo_fast.apps.demo), 4-7 min by a FLOP estimate;
# off by default so the checks above fit one lease with room for a rerun. Writes 3 files to $OUT.
if [ "${GPU_CHECK_DEMO:-0}" = "1" ]; then
    note "growth savings (python -m ligo_fast.apps.demo --preset gpu-small --device cuda)"
    timeout 480 "$PY" -m ligo_fast.apps.demo --preset gpu-small --device cuda --no-progress --out-dir "$OUT" \
        2>&1 | tail -n 20
    [ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
fi

# --- summary -------------------------------------------------------------------------------------------
note summary
echo "triton tests: $(grep -E 'passed|failed|skipped|error' "$OUT/triton_tests.log" | tail -n 1)"
echo "| shapes | mode | provider | median ms | p20 | p80 | TFLOP/s | % peak | roof% | peak extra MiB | vs official |"
grep -E '^\| (bert|llama) \| fwd\+bwd' "$OUT/bench_expand.log" | sort -u || true
echo "status: $STATUS (0 = every section passed)"
exit "$STATUS"
