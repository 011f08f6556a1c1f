#!/usr/bin/env bash
# Full build (compile + link + load) of the extension with its CUDA kernels, on a machine without a GPU:
#   PYTHON=/path/to/venv-with-a-CUDA-build-of-torch/bin/python bash csrc/check_cuda_build.sh
# Builds twice from a temporary copy of the tree, the two ways a user gets the extension:
#   1. setup.py build_ext --inplace with FORCE_CUDA=1 (what `pip install -e . --no-build-isolation` runs);
#   2. the JIT build of ligo_fast.extension (torch.utils.cpp_extension.load) with FORCE_CUDA=1, into a fresh cache;
# and after each, in a new process, loads the module and checks that every ligo_fast op has a CUDA kernel.
# Nothing runs on a GPU: the GPU tests are benchmarks/gpu_check.sh's. TORCH_CUDA_ARCH_LIST defaults to 9.0
# (H100/H200); CUDA_HOME defaults to the toolkit that `nvcc` belongs to. Exits 0 with a message when PYTHON's
# torch has no CUDA or nvcc is missing (CI's CPU torch).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! command -v nvcc >/dev/null 2>&1; then
  echo "check_cuda_build: nvcc not found, skipping"; exit 0
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
  echo "check_cuda_build: $PYTHON has no CUDA build of torch, skipping"; exit 0
fi
if [ -z "${CUDA_HOME:-}" ]; then
  # nvcc may be a link or wrapper outside the toolkit: ask it where its headers are.
  tmpcu="$(mktemp -d)"; touch "$tmpcu/e.cu"
  inc="$(nvcc --dryrun -c "$tmpcu/e.cu" -o "$tmpcu/e.o" 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^" ]*\).*/\1/p' | head -n 1)"
  rm -rf "$tmpcu"
  CUDA_HOME="$inc"
  while [ "$CUDA_HOME" != / ] && [ ! -x "$CUDA_HOME/bin/nvcc" ]; do CUDA_HOME="$(dirname "$CUDA_HOME")"; done
  [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "check_cuda_build: cannot locate the CUDA toolkit; set CUDA_HOME"; exit 1; }
  CUDA_HOME="$(cd "$CUDA_HOME" && pwd -P)"
fi
export CUDA_HOME FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
tar -C "$here" --exclude=./.venv --exclude=./.git --exclude=./out --exclude='./ligo_fast/_C*' --exclude='*/__pycache__' \
  -cf - . | tar -C "$tmp" -xf -
[ -e "$tmp/ligo_fast/kernels" ] || ln -s ../kernels "$tmp/ligo_fast/kernels"
[ -e "$tmp/ligo_fast/csrc" ] || ln -s ../csrc "$tmp/ligo_fast/csrc"
cd "$tmp"
"$PYTHON" -c 'import torch; print(f"check_cuda_build: torch {torch.__version__} (CUDA {torch.version.cuda})")'
echo "check_cuda_build: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

check='
import sys, torch
from ligo_fast import extension
how = extension.load_library()
ops = ["expand_cpp", "expand_cpp_backward", "expand_vec_cpp", "expand_vec_cpp_backward",
       "multi_expand_vec", "multi_expand_vec_backward"]
missing = [f"{op}:{key}" for op in ops for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key("ligo_fast::" + op, key)]
print(f"check_cuda_build: {sys.argv[1]}: {how}; CUDA kernels: {extension.has_cuda_kernels()}")
sys.exit(f"check_cuda_build: {sys.argv[1]}: missing kernels {missing}" if missing else 0)
'

start=$SECONDS
"$PYTHON" setup.py -q build_ext --inplace >"$tmp/setup.log" 2>&1 || { tail -n 40 "$tmp/setup.log"; exit 1; }
echo "check_cuda_build: setup.py build_ext ok ($((SECONDS - start)) s)"
LIGO_FAST_NO_JIT=1 "$PYTHON" -c "$check" setup.py

rm -f ligo_fast/_C*.so
start=$SECONDS
LIGO_FAST_CACHE="$tmp/cache" "$PYTHON" -c "$check" JIT
echo "check_cuda_build: JIT build ok ($((SECONDS - start)) s)"
