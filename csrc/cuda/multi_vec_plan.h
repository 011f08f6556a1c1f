// Host-side plan of a multi-tensor vector launch, shared by the CUDA registration (ligo_ops_cuda.cpp) and the
// CPU emulation of the kernels (emu/, tests only): problems grouped by element type (one launch each), tile
// prefix sums, and the fp32/fp64 workspace layout of the backward. Memory placement is the caller's.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <vector>

#include "../ligo_ops.h"
#include "multi_vec.h"

namespace ligo_fast {

// Problems grouped by element type (one launch each); usually one group.
inline std::map<at::ScalarType, std::vector<VecProblem>> vec_by_dtype(const VecCall& call) {
  std::map<at::ScalarType, std::vector<VecProblem>> groups;
  for (size_t i = 0; i < call.problems.size(); ++i) groups[call.dtypes[i]].push_back(call.problems[i]);
  return groups;
}

// n + 1 prefix sums of the tiles each problem needs (`tiles`: vec_fwd_tiles, vec_bwd_a_tiles, vec_bwd_b_tiles).
template <typename TileFn>
std::vector<int64_t> vec_tile_prefix(const std::vector<VecProblem>& problems, TileFn tiles) {
  std::vector<int64_t> start(problems.size() + 1, 0);
  for (size_t i = 0; i < problems.size(); ++i) start[i + 1] = start[i] + tiles(problems[i]);
  return start;
}

// Accumulation type of the backward workspace: fp64 for fp64 problems, fp32 otherwise.
inline at::ScalarType vec_ws_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Workspace elements for the backward: 2 * L2 * o1 per problem (depth-mixed vectors and their gradients).
inline int64_t vec_ws_elems(const std::vector<VecProblem>& problems) {
  int64_t n = 0;
  for (const auto& p : problems) n += 2 * p.L2 * p.o1;
  return n;
}

// Points each problem's `ws` at its slice of a workspace of vec_ws_elems elements of `elem_size` bytes.
inline void vec_assign_ws(std::vector<VecProblem>& problems, void* base, size_t elem_size) {
  int64_t off = 0;
  for (auto& p : problems) {
    p.ws = static_cast<char*>(base) + off * static_cast<int64_t>(elem_size);
    off += 2 * p.L2 * p.o1;
  }
}

}  // namespace ligo_fast
