// Multi-tensor LiGO vector expansion: problem descriptors and the CUDA launcher interface.
//
// Plain C++ (no torch, no CUDA headers) so that both the torch-facing C++ code and `nvcc -c` of the
// kernels include it. One problem is one `ligo_expand_vec` call:
//
//   b: (L1, o1)   depth: (L2, L1)   E: (L2, o2-o1, o1) or shared (o2-o1, o1) or absent   residual: (L2, o2)
//   out[l, :o1] = depth[l] @ b,   out[l, o1:] = E[l] @ out[l, :o1]   (+ residual[l])
//
// Element strides let inputs be views; outputs are contiguous. All tensors of one launch share one element
// type; accumulation is fp32 (fp64 for fp64).
#pragma once

#include <cstdint>

// Same declaration as cuda_runtime_api.h, so this header needs no CUDA include.
typedef struct CUstream_st* cudaStream_t;

#ifdef __CUDACC__
#define LIGO_HD __host__ __device__
#else
#define LIGO_HD
#endif

namespace ligo_fast {

struct VecProblem {
  // forward inputs
  const void* b;
  const void* depth;
  const void* E;         // nullptr when o2 == o1
  const void* residual;  // nullptr when absent
  // forward output, contiguous (L2, o2)
  void* out;
  // backward: grad of out (strided), outputs (contiguous, input shapes), fp32/fp64 workspace (2 * L2 * o1)
  const void* g;
  void* gb;
  void* gdepth;
  void* gE;
  void* ws;
  int64_t L1, L2, o1, o2;
  int64_t b_s0, b_s1;
  int64_t d_s0, d_s1;
  int64_t E_s0, E_s1, E_s2;  // E_s0 == 0 for a shared E
  int64_t r_s0, r_s1;
  int64_t g_s0, g_s1;
  int64_t E_shared;  // 1 when E is (o2-o1, o1) shared by all layers
};

enum class ElemType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

constexpr int kVecThreads = 256;       // threads per block in every kernel below
constexpr int kVecIdTile = 256;        // identity-part elements per forward tile
constexpr int kVecRowsPerWarp = 4;     // E rows per warp in a forward tile
constexpr int kVecRows = kVecRowsPerWarp * (kVecThreads / 32);  // E rows per forward tile (32)
constexpr int kVecChunk = 1024;        // depth-mixed entries staged in shared memory at a time
constexpr int kVecElemTile = 1024;     // elements per element-wise backward tile (4 per thread)
constexpr int kVecPairs = kVecThreads / 32;  // (l, j) pairs of grad_depth per tile, one per warp

LIGO_HD inline int64_t vec_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks the forward kernel spends on one problem.
inline int64_t vec_fwd_tiles(const VecProblem& p) {
  return p.L2 * (vec_ceil_div(p.o1, kVecIdTile) + vec_ceil_div(p.o2 - p.o1, kVecRows));
}

// Blocks of backward phase A (depth-mixed vector and its gradient, per layer and column tile).
inline int64_t vec_bwd_a_tiles(const VecProblem& p) { return p.L2 * vec_ceil_div(p.o1, kVecIdTile); }

// Blocks of backward phase B: grad_b, grad_depth, grad_E.
inline int64_t vec_bwd_b_tiles(const VecProblem& p) {
  const int64_t nE = (p.E == nullptr) ? 0 : (p.E_shared ? 1 : p.L2) * (p.o2 - p.o1) * p.o1;
  return vec_ceil_div(p.L1 * p.o1, kVecElemTile) + vec_ceil_div(p.L2 * p.L1, kVecPairs) +
         vec_ceil_div(nE, kVecElemTile);
}

// Launchers. `problems` and `tile_start` are device arrays: n descriptors and n + 1 prefix sums of the
// tile counts above (tile_start[n] == total tiles). Return a cudaError_t value (0 on success).
int multi_expand_vec_fwd_launch(ElemType t, const VecProblem* problems, const int64_t* tile_start, int n,
                                int64_t n_tiles, cudaStream_t stream);
int multi_expand_vec_bwd_launch(ElemType t, const VecProblem* problems, const int64_t* tile_start_a,
                                int64_t n_tiles_a, const int64_t* tile_start_b, int64_t n_tiles_b, int n,
                                cudaStream_t stream);

}  // namespace ligo_fast
