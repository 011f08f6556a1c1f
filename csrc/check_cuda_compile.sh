#!/usr/bin/env bash
# Compile-only check of the CUDA sources, runnable without a GPU or a CUDA build of torch:
#   1. every csrc/cuda/*.cu with `nvcc -arch=sm_90 -c` (the kernels include no torch headers);
#   2. every csrc/cuda/*.cpp (the torch registrations) with `g++ -fsyntax-only` against torch's headers, when
#      PYTHON (default: python3) imports torch. CPU wheels lack c10/cuda's generated cuda_cmake_macros.h; an
#      empty stand-in is supplied for that one header.
# Both use C++20: torch 2.13+ builds its extensions with it and 2.14's headers refuse C++17; 2.11's compile under it too.
# Exits 0 with a message when nvcc is absent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NVCC="${NVCC:-nvcc}"
PYTHON="${PYTHON:-python3}"

if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found, skipping"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The CUDA include flags nvcc itself uses (nvcc may be a wrapper script outside the toolkit).
touch "$tmp/empty.cu"
cuda_inc="$("$NVCC" --dryrun -c "$tmp/empty.cu" -o "$tmp/empty.o" 2>&1 | sed -n 's/^#\$ INCLUDES="\(.*\)".*/\1/p' | head -n 1)"

for f in "$here"/cuda/*.cu; do
  "$NVCC" -arch=sm_90 -O3 -std=c++20 -c "$f" -o "$tmp/$(basename "$f").o"
  echo "check_cuda_compile: nvcc ok  $(basename "$f")"
done

if inc="$("$PYTHON" -c 'import sysconfig, torch.utils.cpp_extension as c; print(" ".join(["-I" + p for p in c.include_paths()] + ["-I" + sysconfig.get_paths()["include"]]))' 2>/dev/null)"; then
  mkdir -p "$tmp/stub/c10/cuda/impl"
  echo "#pragma once" > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
  for f in "$here"/cuda/*.cpp; do
    # shellcheck disable=SC2086
    "${CXX:-g++}" -std=c++20 -fsyntax-only -w $inc -idirafter "$tmp/stub" $cuda_inc "$f"
    echo "check_cuda_compile: g++ syntax ok  $(basename "$f")"
  done
else
  echo "check_cuda_compile: $PYTHON cannot import torch, skipping the syntax check of csrc/cuda/*.cpp"
fi
