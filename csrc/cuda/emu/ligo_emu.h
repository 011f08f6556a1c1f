// A CPU stand-in for the parts of CUDA that csrc/cuda/multi_vec.cu uses, so that the very kernel source can be
// compiled as C++ and run without a GPU (tests/test_cuda_emu.py). Not a general CUDA emulator:
//   * a launch runs the grid's blocks one after another on one set of real CPU threads (one per CUDA thread);
//   * __syncthreads() is a barrier of the block's threads; __shared__ is a function-local static (one block
//     runs at a time, so every thread of the running block sees the same array);
//   * __shfl_xor_sync() exchanges through the warp's 32 slots between two barriers of its 32 threads (all
//     lanes must take part, as the kernels' full-mask shuffles require on a GPU too);
//   * a thread that returns leaves its block's and warp's barriers (arrive_and_drop), as exited threads stop
//     counting for __syncthreads() on a GPU;
//   * __half / __nv_bfloat16 are c10::Half / c10::BFloat16 (round-to-nearest-even conversions, as the CUDA
//     intrinsics used here).
// Shapes of parallelism, not speed: fine for tests on small problems.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline float __half2float(__half x) { return static_cast<float>(x); }
inline __half __float2half_rn(float x) { return __half(x); }
inline float __bfloat162float(__nv_bfloat16 x) { return static_cast<float>(x); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16(x); }

inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 4 };

namespace ligo_emu {

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};

// std::barrier's two calls in C++17: torch 2.11 (the GPU image's) builds extensions with -std=c++17.
class Barrier {
 public:
  explicit Barrier(int n) : expected_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t phase = phase_;
    if (++arrived_ >= expected_) {
      next_phase();
    } else {
      cv_.wait(lock, [&] { return phase_ != phase; });
    }
  }
  void reset(int n) {  // only while no thread waits on or arrives at this barrier
    std::lock_guard<std::mutex> lock(m_);
    expected_ = n;
    arrived_ = 0;
  }
  void arrive_and_drop() {
    std::lock_guard<std::mutex> lock(m_);
    --expected_;
    if (expected_ > 0 && arrived_ >= expected_) next_phase();
  }

 private:
  void next_phase() {
    arrived_ = 0;
    ++phase_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int expected_;
  int arrived_ = 0;
  uint64_t phase_ = 0;
};

struct Warp {
  explicit Warp(int n) : bar(n) {}
  Barrier bar;
  double slots[32] = {};
};

struct ThreadCtx {
  Dim thread, block;
  Barrier* block_bar = nullptr;
  Warp* warp = nullptr;
};

inline thread_local ThreadCtx ctx;
inline int last_error = 0;

template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned grid, int block, Args... args) {
  if (block <= 0 || block % 32 != 0) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  // One set of `block` threads runs the blocks one after another; `gate` separates the blocks, and the
  // per-block barriers are reset between its two phases, when no thread uses them.
  Barrier gate(block);
  Barrier block_bar(block);
  std::vector<std::unique_ptr<Warp>> warps;
  for (int w = 0; w < block / 32; ++w) warps.push_back(std::make_unique<Warp>(32));
  std::vector<int> failed(block, 0);
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (int t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      ctx.thread = {static_cast<unsigned>(t), 0, 0};
      ctx.block_bar = &block_bar;
      ctx.warp = warps[t / 32].get();
      for (unsigned b = 0; b < grid; ++b) {
        gate.arrive_and_wait();  // the previous block is done everywhere
        if (t == 0) {
          block_bar.reset(block);
          for (auto& w : warps) w->bar.reset(32);
        }
        gate.arrive_and_wait();  // the barriers are fresh
        ctx.block = {b, 0, 0};
        try {
          kernel(args...);
        } catch (...) {
          failed[t] = 1;
        }
        ctx.warp->bar.arrive_and_drop();  // a finished thread stops counting for this block's barriers
        block_bar.arrive_and_drop();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failed) {
    if (f) last_error = cudaErrorLaunchFailure;
  }
}

}  // namespace ligo_emu

#define threadIdx (::ligo_emu::ctx.thread)
#define blockIdx (::ligo_emu::ctx.block)

inline void __syncthreads() { ::ligo_emu::ctx.block_bar->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
  auto* w = ::ligo_emu::ctx.warp;
  const int lane = static_cast<int>(threadIdx.x % 32);
  w->slots[lane] = static_cast<double>(v);
  w->bar.arrive_and_wait();
  const T out = static_cast<T>(w->slots[lane ^ lane_mask]);
  w->bar.arrive_and_wait();
  return out;
}

inline cudaError_t cudaGetLastError() {
  const int e = ::ligo_emu::last_error;
  ::ligo_emu::last_error = 0;
  return static_cast<cudaError_t>(e);
}
