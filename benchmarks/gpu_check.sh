#!/usr/bin/env bash
# The prepared GPU check for ligo_fast, sized for one lent GPU window (device image: Python 3.12, torch 2.11 cu130,
# triton 3.6, ninja, pybind11, no network; installs nothing). Two calls:
#
#   bash benchmarks/gpu_check.sh              # = --part 1, ~6.5 min: environment, the C++/CUDA extension built once,
#                                             #   GPU tests (every autotune config in bf16, tests/test_ops.py's matrix in
#                                             #   bf16/fp16/fp32), the bf16 operator step, bf16 expansion (BERT, GQA Llama)
#   bash benchmarks/gpu_check.sh --part 2     # ~4 min: the whole model on the GPU against the float64 CPU oracle
#                                             #   (gpu_model_check.py: execution plan lean/factored per backend, the
#                                             #   binder, materialize/save_materialized), fp32 step and expansion,
#                                             #   llama-xl (only where the GPU has the memory), fp32/fp16 config tests,
#                                             #   the multi-tensor vector op when the extension is cached from part 1
#                                             #   on the same machine
#   OUT=dir bash benchmarks/gpu_check.sh --dry-run [--part N]   # on a CPU: every section's plumbing, tiny shapes,
#                                             #   Triton interpreted, torch.compile on its eager backend; both parts
#                                             #   unless --part names one
#   OUT=dir bash benchmarks/gpu_check.sh --smoke   # a dry run of part 1 with one shape and one test, and part 2's
#                                             #   model check on Llama with the cpp and torch backends: what the test
#                                             #   suite runs (tests/test_gpu_check.py)
#
# Each section has a time limit and none runs past BUDGET seconds (part 1: 390, part 2: 240, dry run: 300) after the
# start; a section without time left is skipped and says so. $OUT (default ./out) gets at most 8 files (all a lent
# machine returns): env.txt (versions, nvidia-smi), ext.log, tests.log, step.log, expand.log, model.log (one
# PASS/FAIL line per model check, with its numbers), rows.jsonl (every
# measured row and check as JSON, appended as measured) and summary.md (benchmarks/gpu_summary.py: correctness,
# speed-ups vs eager and torch.compile, % of roofline; written even when sections fail). Exit status 0 only when
# every section passed. Caches (Triton kernels and autotuning results, the extension's JIT build, inductor) live
# under $LIGO_GPU_CACHE (default /tmp/ligo_gpu_cache), outside the copied tree, so part 2 reuses them on a warm
# machine. On a lent machine: `OUT=$OUT bash benchmarks/gpu_check.sh` with a 450 s timeout (it ends by itself inside
# 390 s), then `OUT=$OUT bash benchmarks/gpu_check.sh --part 2` at once (warm: caches kept) with 300 s.
set -uo pipefail
export PYTHONUNBUFFERED=1

PART="" DRY=0 SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --part) PART="$2"; shift 2 ;;
        --part=*) PART="${1#--part=}"; shift ;;
        --dry-run) DRY=1; shift ;;
        --smoke) DRY=1 SMOKE=1 PART=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (use --part 1|2, --dry-run, --smoke)" >&2; exit 2 ;;
    esac
done
case "$PART" in
    "") PARTS=$([ "$DRY" = 1 ] && echo "1 2" || echo "1") ;;
    1|2) PARTS="$PART" ;;
    *) echo "gpu_check.sh: --part takes 1 or 2, got '$PART'" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
STATUS=0
ROWS="$OUT/rows.jsonl"
: >"$ROWS"
for f in env.txt ext.log tests.log step.log expand.log model.log summary.md; do : >"$OUT/$f"; done

if [ "$DRY" = 1 ]; then
    DEFAULT_BUDGET=300  # a loaded 2-core machine: ~130-150 s; the budget only stops a hang
    export TRITON_INTERPRET=1 LIGO_BENCH_COMPILE_BACKEND=eager OMP_NUM_THREADS=1
    DEV=cpu D16=float16  # the interpreter's bf16 dots are unreliable (tests/test_ops.py): fp16 stands in for bf16
else
    DEFAULT_BUDGET=$([ "$PARTS" = 2 ] && echo 240 || echo 390)
    DEV=cuda D16=bfloat16
fi
BUDGET="${BUDGET:-$DEFAULT_BUDGET}"

CACHE="${LIGO_GPU_CACHE:-${TMPDIR:-/tmp}/ligo_gpu_cache}"
mkdir -p "$CACHE"
export TRITON_CACHE_DIR="$CACHE/triton" TRITON_CACHE_AUTOTUNING=1 LIGO_FAST_CACHE="$CACHE/ext" \
    TORCHINDUCTOR_CACHE_DIR="$CACHE/inductor"

note() { printf '\n=== %s (%d s) ===\n' "$*" "$SECONDS"; }
# limit WANT: WANT seconds, or what is left before the deadline (15 s kept for the summary); 0 = skip
limit() {
    local left=$((BUDGET - 15 - SECONDS))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# section NAME WANT LOG CMD...: CMD under ``timeout``, output appended to LOG and shown (filtered by SHOW, a grep -E
# pattern, when set); its status goes to rows.jsonl. Returns CMD's exit code (124: timed out or skipped).
SHOW=""
section() {
    local name="$1" want="$2" log="$3" t rc start=$SECONDS
    shift 3
    note "$name"
    t=$(limit "$want")
    if [ "$t" -eq 0 ]; then
        echo "skipped: no time left before the ${BUDGET} s deadline"
        printf '{"section": "gpu_check", "name": "%s", "status": "skipped (no time left)", "seconds": 0}\n' "$name" >>"$ROWS"
        STATUS=1
        return 124
    fi
    printf '\n### %s: %s\n' "$name" "$*" >>"$log"
    # SIGINT first: pytest then prints its summary line, a benchmark has printed its rows already; KILL 15 s later
    if [ -n "$SHOW" ]; then
        timeout -s INT -k 15 "$t" "$@" 2>&1 | tee -a "$log" | grep -E --line-buffered "$SHOW"
    else
        timeout -s INT -k 15 "$t" "$@" 2>&1 | tee -a "$log" | tail -n 25
    fi
    rc=${PIPESTATUS[0]}
    local what="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        what="timed out after $t s"
        rc=124
    elif [ "$rc" -ne 0 ]; then
        what="failed (exit $rc)"
    fi
    echo "--- $name: $what ($((SECONDS - start)) s)"
    printf '{"section": "gpu_check", "name": "%s", "status": "%s", "seconds": %d, "limit": %d}\n' \
        "$name" "$what" "$((SECONDS - start))" "$t" >>"$ROWS"
    [ "$rc" -eq 0 ] || STATUS=1
    return "$rc"
}

# --- setup ---------------------------------------------------------------------------------------------
# The package is used from a source tree, not installed. ``ligo_fast.kernels`` lives in ./kernels (setuptools
# package_dir maps it at install time), so run from a temporary copy of the tree with the symlink
# ligo_fast/kernels -> ../kernels: the checkout is left untouched, and files that locate siblings through __file__
# (csrc/, tests/) find them in the copy. The caches are outside it (above), the copy goes at exit.
SRC="$(mktemp -d "${TMPDIR:-/tmp}/ligo_src.XXXXXX")"
trap 'rm -rf "$SRC"' EXIT
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./out --exclude=./.whl --exclude=./.gl -cf - . \
    | tar -C "$SRC" -xf -
[ -e "$SRC/ligo_fast/kernels" ] || ln -s ../kernels "$SRC/ligo_fast/kernels"
[ -e "$SRC/ligo_fast/csrc" ] || ln -s ../csrc "$SRC/ligo_fast/csrc"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
cd "$SRC"

# --- environment ---------------------------------------------------------------------------------------
environment() {
    date -u
    uname -a
    echo "parts: $PARTS, dry run: $DRY, budget: $BUDGET s, cache: $CACHE"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv || true
        nvidia-smi || true
    else
        echo "nvidia-smi: not found"
    fi
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    "$PY" - <<'EOF'
import platform, sys
import torch, transformers, triton
print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda}), "
      f"triton {triton.__version__}, transformers {transformers.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32}")
import ligo_fast.kernels.expand as k
print(f"triton interpreted: {k.INTERPRETED}")
EOF
}
export -f environment
export PY PARTS DRY BUDGET CACHE
section environment 60 "$OUT/env.txt" bash -c environment

# --- the extension, built once -------------------------------------------------------------------------
# A JIT build of csrc/ (CUDA kernels included on a GPU) into $LIGO_FAST_CACHE; everything later loads it from
# there. It runs in the background beside the Triton tests (which never load it: they deselect the cpp backend),
# and is waited for before anything that may load it. If it fails, the rest runs with LIGO_FAST_NO_JIT=1 (the cpp
# backend then reports itself unavailable) instead of every later process retrying the build.
extension() {
    "$PY" -c "
from ligo_fast import extension as e
print('extension:', e.load_library())
print('CUDA kernels:', e.has_cuda_kernels())"
}
export -f extension
EXT_PID=""
start_extension() {
    section "extension (build once)" 240 "$OUT/ext.log" bash -c extension >"$SRC/ext.console" 2>&1 &
    EXT_PID=$!
}
finish_extension() {  # returns 0 when the extension loaded
    local rc=0
    if [ -z "$EXT_PID" ]; then
        [ -z "${LIGO_FAST_NO_JIT:-}" ]
        return
    fi
    wait "$EXT_PID"
    rc=$?
    EXT_PID=""
    cat "$SRC/ext.console"
    if [ "$rc" -ne 0 ]; then
        STATUS=1
        export LIGO_FAST_NO_JIT=1
        echo "extension unavailable: the rest runs with LIGO_FAST_NO_JIT=1"
    fi
    return "$rc"
}
case " $PARTS " in
    *" 1 "*) start_extension ;;
    *) if [ -d "$LIGO_FAST_CACHE" ] || [ "$DRY" = 1 ]; then
           start_extension
       else
           export LIGO_FAST_NO_JIT=1
           echo "extension: no build from part 1 on this machine; its sections are left out"
           printf '{"section": "gpu_check", "name": "extension", "status": "not built (part 2 on a fresh machine)", "seconds": 0}\n' >>"$ROWS"
       fi ;;
esac

# --- the sections of each part ---------------------------------------------------------------------------
EXPAND=(benchmarks/bench_expand.py --device "$DEV" --modes forward,fwd+bwd --jsonl "$ROWS")
STEP=(benchmarks/bench_operator_step.py --device "$DEV" --providers official,ours-default,compat,plain-large
      --no-memory --lean-layers "" --shapes bert --jsonl "$ROWS")
TESTS=("$PY" -m pytest -v -p no:cacheprovider -rfEs -m "not cpu_only")  # -v: an outcome per line, kept if cut
if [ "$DRY" = 1 ]; then
    EXPAND+=(--tiny --rounds 1)
    STEP+=(--quick --tokens 2x16 --vocab 256 --warmup 0 --repeats 1)
    CONFIG_TESTS=(tests/test_kernel_configs.py -m "not gpu")  # the interpreter's subset of every-config tests
    [ "$SMOKE" = 1 ] && CONFIG_TESTS+=(-k reaches_the_launch)
    STEP_DTYPE=float32  # a CPU's 16-bit step is no plumbing of its own
else
    EXPAND+=(--rounds 5)
    STEP+=(--tokens 256x128 --warmup 2 --repeats 6)
    STEP_DTYPE=""
fi
EXP_SHOW='^\| [a-z]|vs torch path|skipped|failed|Error'
STEP_SHOW='^\| bert|^- bert|FAILED|Error'
# the whole model on $DEV in float32 against the float64 CPU oracle (each check one PASS/FAIL/SKIP line); on a GPU
# the Triton kernels compile for the model's shapes with heuristic configs (autotuning off: the configs have their
# own tests) and the cpp backend runs the extension's CUDA kernels where it loaded
model_check() {  # model_check WANT [gpu_model_check.py arguments...]
    local want="$1"
    shift
    LIGO_FAST_AUTOTUNE=0 SHOW='^(PASS|FAIL|SKIP)|model checks|Error' \
        section "model on $DEV: execution plan, binder, materialize (float32 vs float64 CPU)" "$want" \
        "$OUT/model.log" "$PY" benchmarks/gpu_model_check.py --device "$DEV" --jsonl "$ROWS" "$@"
}

part1() {
    # The Triton tests run beside the extension's build (autotuning off for their fixed shapes: heuristic configs;
    # test_kernel_configs forces every config itself); the benchmarks wait for the build (nothing compiles beside a
    # timing, and building the models on the CPU may load the cpp backend); the extension's own tests come last.
    if [ "$DRY" = 1 ]; then
        section "kernel tests (interpreter subset)" 60 "$OUT/tests.log" "${TESTS[@]}" "${CONFIG_TESTS[@]}"
    else
        LIGO_FAST_AUTOTUNE=0 section "GPU tests: Triton (every config in bf16, the ops matrix)" 120 "$OUT/tests.log" \
            "${TESTS[@]}" -k "(not test_forced_config or bf16) and not cpp" tests/test_kernel_configs.py \
            tests/test_triton_ops.py tests/test_ops.py "tests/test_triton_group.py::test_gpu_group[bf16]"
    fi
    finish_extension
    local ext=$?
    SHOW="$STEP_SHOW" section "operator step, BERT-Base shape, ${STEP_DTYPE:-bfloat16}" 100 "$OUT/step.log" \
        "$PY" "${STEP[@]}" --dtype "${STEP_DTYPE:-bfloat16}"
    SHOW="$EXP_SHOW" section "expansion, bert, $D16" 90 "$OUT/expand.log" \
        "$PY" "${EXPAND[@]}" --dtype "$D16" --shapes bert
    if [ "$SMOKE" = 0 ]; then  # the Llama goal is the roofline: no torch.compile (its compiles would take the time)
        SHOW="$EXP_SHOW" section "expansion, llama (GQA), $D16" 50 "$OUT/expand.log" \
            "$PY" "${EXPAND[@]}" --dtype "$D16" --shapes llama --providers official,torch,triton
    fi
    if [ "$ext" = 0 ]; then
        LIGO_FAST_AUTOTUNE=0 section "tests: the C++/CUDA extension" 45 "$OUT/tests.log" "${TESTS[@]}" \
            -k "$([ "$DRY" = 1 ] && echo "cpp and size-1" || echo cpp)" tests/test_ops.py tests/test_cpp_ext.py
    fi
    if [ "$SMOKE" = 1 ]; then  # part 2's model check, its quickest case: the smoke covers its plumbing
        model_check 60 --models llama --backends cpp,torch
    fi
}

part2() {
    finish_extension  # a cached build loads in seconds; nothing runs beside a timing
    local ext=$?
    model_check 60  # correctness first: Llama (GQA) and BERT, backends triton, cpp, torch
    if [ "$DRY" = 0 ]; then  # a dry run's part 1 ran the step in float32 already
        SHOW="$STEP_SHOW" section "operator step, BERT-Base shape, float32" 60 "$OUT/step.log" \
            "$PY" "${STEP[@]}" --dtype float32
    fi
    SHOW="$EXP_SHOW" section "expansion, bert, float32 (no torch.compile)" 45 "$OUT/expand.log" \
        "$PY" "${EXPAND[@]}" --dtype float32 --shapes bert --providers official,torch,triton
    SHOW="$EXP_SHOW" section "expansion, llama-xl, $D16 (where the memory allows)" 70 "$OUT/expand.log" \
        "$PY" "${EXPAND[@]}" --dtype "$D16" --shapes llama-xl --providers official,official+compile,torch,triton
    if [ "$DRY" = 0 ]; then
        LIGO_FAST_AUTOTUNE=0 section "GPU tests (fp32 and fp16 configs)" 60 "$OUT/tests.log" \
            "${TESTS[@]}" -k "test_forced_config and (fp32 or fp16)" tests/test_kernel_configs.py
    fi
    if [ "$ext" = 0 ]; then
        SHOW='^\||GPU|extension' section "multi-tensor vector op (bench_ext.py --skip-cpu)" 30 "$OUT/ext.log" \
            "$PY" benchmarks/bench_ext.py --skip-cpu --min-time 0.3
    fi
}

for part in $PARTS; do
    "part$part"
done
finish_extension >/dev/null || true  # never leave the build running

# --- summary -------------------------------------------------------------------------------------------
note summary
printf '{"section": "gpu_check", "name": "total", "status": "%s", "seconds": %d, "limit": %d}\n' \
    "$([ "$STATUS" = 0 ] && echo ok || echo failed)" "$SECONDS" "$BUDGET" >>"$ROWS"
if ! timeout 30 "$PY" benchmarks/gpu_summary.py "$OUT" --title "gpu_check.sh parts $PARTS$([ "$DRY" = 1 ] && echo ', dry run')"; then
    STATUS=1
    { echo "# gpu_check summary (gpu_summary.py failed: raw section lines)"; echo; grep '"gpu_check"' "$ROWS"; } \
        >"$OUT/summary.md"
    cat "$OUT/summary.md"
fi
echo "total: $SECONDS s; status: $STATUS (0 = every section passed)"
exit "$STATUS"
