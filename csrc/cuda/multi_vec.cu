// Multi-tensor LiGO vector expansion kernels: one launch covers every problem of a list (grid over
// (problem, tile)); see multi_vec.h for the problem layout. Vectors are small and memory-bound, so the
// point is one launch instead of one per bias/LayerNorm tensor, not arithmetic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "multi_vec.h"

// Kernel launch. csrc/cuda/emu/ compiles this file as C++ with LIGO_FAST_CUDA_EMU, running each block's
// threads as CPU threads (tests/test_cuda_emu.py): the same kernels, checked without a GPU.
#ifdef LIGO_FAST_CUDA_EMU
#define LIGO_LAUNCH(kernel, grid, block, stream, ...) ::ligo_emu::launch(kernel, grid, block, __VA_ARGS__)
#else
#define LIGO_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif

namespace ligo_fast {
namespace {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Index of the problem that owns `tile`: the largest i with tile_start[i] <= tile (problems with no
// tiles are skipped because their successor starts at the same place).
__device__ __forceinline__ int find_problem(const int64_t* __restrict__ tile_start, int n, int64_t tile) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (tile_start[mid] <= tile) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// (depth[l] @ b)[r], accumulated in A.
template <typename T, typename A>
__device__ __forceinline__ A mixed(const VecProblem& p, const T* __restrict__ b, const T* __restrict__ d, int64_t l,
                                   int64_t r) {
  A acc = 0;
  for (int64_t j = 0; j < p.L1; ++j) acc += to_acc(d[l * p.d_s0 + j * p.d_s1]) * to_acc(b[j * p.b_s0 + r * p.b_s1]);
  return acc;
}

// Forward. Per problem and large layer l: ceil(o1 / kVecIdTile) identity tiles (one element per thread),
// then ceil((o2 - o1) / kVecRows) tiles of kVecRows rows of E[l] @ bm, one warp per kVecRowsPerWarp rows,
// bm staged through shared memory kVecChunk entries at a time.
template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    multi_vec_fwd_kernel(const VecProblem* __restrict__ problems, const int64_t* __restrict__ tile_start, int n) {
  using A = typename Acc<T>::type;
  __shared__ A sbm[kVecChunk];
  const int pi = find_problem(tile_start, n, blockIdx.x);
  const VecProblem& p = problems[pi];
  const T* b = static_cast<const T*>(p.b);
  const T* d = static_cast<const T*>(p.depth);
  const T* res = static_cast<const T*>(p.residual);
  T* out = static_cast<T*>(p.out);
  const int64_t ne = p.o2 - p.o1;
  const int64_t n_id = vec_ceil_div(p.o1, kVecIdTile);
  const int64_t per_layer = n_id + vec_ceil_div(ne, kVecRows);
  int64_t t = blockIdx.x - tile_start[pi];
  const int64_t l = t / per_layer;
  t -= l * per_layer;

  if (t < n_id) {
    const int64_t r = t * kVecIdTile + threadIdx.x;
    if (r < p.o1) {
      A acc = mixed<T, A>(p, b, d, l, r);
      if (res != nullptr) acc += to_acc(res[l * p.r_s0 + r * p.r_s1]);
      out[l * p.o2 + r] = from_acc<T>(acc);
    }
    return;
  }

  const T* E = static_cast<const T*>(p.E) + l * p.E_s0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t k0 = (t - n_id) * kVecRows + warp * kVecRowsPerWarp;
  A acc[kVecRowsPerWarp];
#pragma unroll
  for (int q = 0; q < kVecRowsPerWarp; ++q) acc[q] = 0;
  for (int64_t c0 = 0; c0 < p.o1; c0 += kVecChunk) {
    const int64_t cn = min(static_cast<int64_t>(kVecChunk), p.o1 - c0);
    for (int64_t i = threadIdx.x; i < cn; i += kVecThreads) sbm[i] = mixed<T, A>(p, b, d, l, c0 + i);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kVecRowsPerWarp; ++q) {
      const int64_t k = k0 + q;
      if (k < ne) {
        const T* row = E + k * p.E_s1 + c0 * p.E_s2;
        for (int64_t i = lane; i < cn; i += 32) acc[q] += to_acc(row[i * p.E_s2]) * sbm[i];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kVecRowsPerWarp; ++q) {
    const A v = warp_sum(acc[q]);
    const int64_t k = k0 + q;
    if (lane == 0 && k < ne) {
      const int64_t r = p.o1 + k;
      out[l * p.o2 + r] = from_acc<T>(res != nullptr ? v + to_acc(res[l * p.r_s0 + r * p.r_s1]) : v);
    }
  }
}

// Backward phase A, per problem, layer l and tile of kVecIdTile columns r: the depth-mixed vector
// bm[l, r] and its gradient gbm[l, r] = g[l, r] + sum_k E[l, k, r] g[l, o1 + k], into the workspace.
template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    multi_vec_bwd_a_kernel(const VecProblem* __restrict__ problems, const int64_t* __restrict__ tile_start, int n) {
  using A = typename Acc<T>::type;
  const int pi = find_problem(tile_start, n, blockIdx.x);
  const VecProblem& p = problems[pi];
  const int64_t per_layer = vec_ceil_div(p.o1, kVecIdTile);
  const int64_t t = blockIdx.x - tile_start[pi];
  const int64_t l = t / per_layer;
  const int64_t r = (t - l * per_layer) * kVecIdTile + threadIdx.x;
  if (r >= p.o1) return;
  const T* g = static_cast<const T*>(p.g);
  A* ws = static_cast<A*>(p.ws);
  const A bm = mixed<T, A>(p, static_cast<const T*>(p.b), static_cast<const T*>(p.depth), l, r);
  A gbm = to_acc(g[l * p.g_s0 + r * p.g_s1]);
  if (p.E != nullptr) {
    const T* E = static_cast<const T*>(p.E) + l * p.E_s0 + r * p.E_s2;
    const T* ge = g + l * p.g_s0 + p.o1 * p.g_s1;
    for (int64_t k = 0; k < p.o2 - p.o1; ++k) gbm += to_acc(E[k * p.E_s1]) * to_acc(ge[k * p.g_s1]);
  }
  ws[l * p.o1 + r] = bm;
  ws[(p.L2 + l) * p.o1 + r] = gbm;
}

// Backward phase B, per problem: grad_b tiles, grad_depth tiles (one (l, j) pair per warp), grad_E tiles.
template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    multi_vec_bwd_b_kernel(const VecProblem* __restrict__ problems, const int64_t* __restrict__ tile_start, int n) {
  using A = typename Acc<T>::type;
  const int pi = find_problem(tile_start, n, blockIdx.x);
  const VecProblem& p = problems[pi];
  const A* bm = static_cast<const A*>(p.ws);
  const A* gbm = bm + p.L2 * p.o1;
  const T* d = static_cast<const T*>(p.depth);
  int64_t t = blockIdx.x - tile_start[pi];

  const int64_t n_gb = vec_ceil_div(p.L1 * p.o1, kVecElemTile);
  if (t < n_gb) {  // gb[j, r] = sum_l depth[l, j] gbm[l, r]
    T* gb = static_cast<T*>(p.gb);
    for (int q = 0; q < kVecElemTile / kVecThreads; ++q) {
      const int64_t e = t * kVecElemTile + q * kVecThreads + threadIdx.x;
      if (e >= p.L1 * p.o1) break;
      const int64_t j = e / p.o1, r = e - j * p.o1;
      A acc = 0;
      for (int64_t l = 0; l < p.L2; ++l) acc += to_acc(d[l * p.d_s0 + j * p.d_s1]) * gbm[l * p.o1 + r];
      gb[e] = from_acc<T>(acc);
    }
    return;
  }
  t -= n_gb;

  const int64_t n_gd = vec_ceil_div(p.L2 * p.L1, kVecPairs);
  if (t < n_gd) {  // gdepth[l, j] = sum_r gbm[l, r] b[j, r]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t pair = t * kVecPairs + warp;
    if (pair >= p.L2 * p.L1) return;
    const int64_t l = pair / p.L1, j = pair - l * p.L1;
    const T* b = static_cast<const T*>(p.b) + j * p.b_s0;
    A acc = 0;
    for (int64_t r = lane; r < p.o1; r += 32) acc += gbm[l * p.o1 + r] * to_acc(b[r * p.b_s1]);
    acc = warp_sum(acc);
    if (lane == 0) static_cast<T*>(p.gdepth)[pair] = from_acc<T>(acc);
    return;
  }
  t -= n_gd;

  // gE[l, k, r] = g[l, o1 + k] bm[l, r]; summed over l when E is shared.
  const int64_t ne = p.o2 - p.o1;
  const int64_t nE = (p.E_shared ? 1 : p.L2) * ne * p.o1;
  const T* ge = static_cast<const T*>(p.g) + p.o1 * p.g_s1;
  T* gE = static_cast<T*>(p.gE);
  for (int q = 0; q < kVecElemTile / kVecThreads; ++q) {
    const int64_t e = t * kVecElemTile + q * kVecThreads + threadIdx.x;
    if (e >= nE) break;
    const int64_t kr = e % (ne * p.o1);
    const int64_t k = kr / p.o1, r = kr - k * p.o1;
    A acc = 0;
    if (p.E_shared) {
      for (int64_t l = 0; l < p.L2; ++l) acc += to_acc(ge[l * p.g_s0 + k * p.g_s1]) * bm[l * p.o1 + r];
    } else {
      const int64_t l = e / (ne * p.o1);
      acc = to_acc(ge[l * p.g_s0 + k * p.g_s1]) * bm[l * p.o1 + r];
    }
    gE[e] = from_acc<T>(acc);
  }
}

template <typename T>
int launch_fwd(const VecProblem* problems, const int64_t* tile_start, int n, int64_t n_tiles, cudaStream_t stream) {
  if (n_tiles > 0) {
    LIGO_LAUNCH(multi_vec_fwd_kernel<T>, static_cast<unsigned>(n_tiles), kVecThreads, stream, problems, tile_start, n);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_bwd(const VecProblem* problems, const int64_t* ts_a, int64_t n_a, const int64_t* ts_b, int64_t n_b, int n,
               cudaStream_t stream) {
  if (n_a > 0) LIGO_LAUNCH(multi_vec_bwd_a_kernel<T>, static_cast<unsigned>(n_a), kVecThreads, stream, problems, ts_a, n);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  if (n_b > 0) LIGO_LAUNCH(multi_vec_bwd_b_kernel<T>, static_cast<unsigned>(n_b), kVecThreads, stream, problems, ts_b, n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int multi_expand_vec_fwd_launch(ElemType t, const VecProblem* problems, const int64_t* tile_start, int n,
                                int64_t n_tiles, cudaStream_t stream) {
  switch (t) {
    case ElemType::kFloat32:
      return launch_fwd<float>(problems, tile_start, n, n_tiles, stream);
    case ElemType::kFloat16:
      return launch_fwd<__half>(problems, tile_start, n, n_tiles, stream);
    case ElemType::kBFloat16:
      return launch_fwd<__nv_bfloat16>(problems, tile_start, n, n_tiles, stream);
    case ElemType::kFloat64:
      return launch_fwd<double>(problems, tile_start, n, n_tiles, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int multi_expand_vec_bwd_launch(ElemType t, const VecProblem* problems, const int64_t* tile_start_a,
                                int64_t n_tiles_a, const int64_t* tile_start_b, int64_t n_tiles_b, int n,
                                cudaStream_t stream) {
  switch (t) {
    case ElemType::kFloat32:
      return launch_bwd<float>(problems, tile_start_a, n_tiles_a, tile_start_b, n_tiles_b, n, stream);
    case ElemType::kFloat16:
      return launch_bwd<__half>(problems, tile_start_a, n_tiles_a, tile_start_b, n_tiles_b, n, stream);
    case ElemType::kBFloat16:
      return launch_bwd<__nv_bfloat16>(problems, tile_start_a, n_tiles_a, tile_start_b, n_tiles_b, n, stream);
    case ElemType::kFloat64:
      return launch_bwd<double>(problems, tile_start_a, n_tiles_a, tile_start_b, n_tiles_b, n, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace ligo_fast
