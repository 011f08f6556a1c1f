// CUDA registrations of the vector ops: the problem list goes to the device as one descriptor buffer and
// every problem of one element type is done by one kernel launch (two for the backward). Built only when
// torch has CUDA (setup.py / ligo_fast/extension.py add this file and multi_vec.cu).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstring>

#include "../ligo_ops.h"
#include "multi_vec.h"
#include "multi_vec_plan.h"

namespace ligo_fast {

namespace {

// Copies `problems` plus the given tile prefix sums to the device in one transfer (pinned, async).
// Returns the device buffer (kept alive by the caller until the launches are queued).
Tensor upload(const std::vector<VecProblem>& problems, const std::vector<std::vector<int64_t>>& starts,
              const at::Device& device) {
  const size_t n_bytes_p = problems.size() * sizeof(VecProblem);
  size_t n_bytes = n_bytes_p;
  for (const auto& s : starts) n_bytes += s.size() * sizeof(int64_t);
  Tensor host = at::empty({static_cast<int64_t>(n_bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* dst = static_cast<char*>(host.data_ptr());
  std::memcpy(dst, problems.data(), n_bytes_p);
  size_t off = n_bytes_p;
  for (const auto& s : starts) {
    std::memcpy(dst + off, s.data(), s.size() * sizeof(int64_t));
    off += s.size() * sizeof(int64_t);
  }
  return host.to(at::TensorOptions().device(device), /*non_blocking=*/true);
}

void check_launch(int err, const char* op) {
  TORCH_CHECK(err == 0, op, ": kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void run_forward(const VecCall& call, const at::Device& device, const char* op) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  for (auto& [dtype, problems] : vec_by_dtype(call)) {
    const auto start = vec_tile_prefix(problems, [](const VecProblem& p) { return vec_fwd_tiles(p); });
    if (start.back() == 0) continue;
    const Tensor buf = upload(problems, {start}, device);
    const auto* dp = static_cast<const VecProblem*>(buf.data_ptr());
    const auto* ds = reinterpret_cast<const int64_t*>(static_cast<const char*>(buf.data_ptr()) +
                                                      problems.size() * sizeof(VecProblem));
    check_launch(multi_expand_vec_fwd_launch(elem_type(dtype), dp, ds, static_cast<int>(problems.size()),
                                             start.back(), stream),
                 op);
  }
}

void run_backward(const VecCall& call, const at::Device& device, const char* op) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  for (auto& [dtype, problems] : vec_by_dtype(call)) {
    // fp32 (fp64) workspace for the depth-mixed vectors and their gradients
    const Tensor ws =
        at::empty({vec_ws_elems(problems)}, at::TensorOptions().dtype(vec_ws_dtype(dtype)).device(device));
    vec_assign_ws(problems, ws.data_ptr(), ws.element_size());
    const auto sa = vec_tile_prefix(problems, [](const VecProblem& p) { return vec_bwd_a_tiles(p); });
    const auto sb = vec_tile_prefix(problems, [](const VecProblem& p) { return vec_bwd_b_tiles(p); });
    if (sb.back() == 0) continue;
    const Tensor buf = upload(problems, {sa, sb}, device);
    const char* base = static_cast<const char*>(buf.data_ptr());
    const auto* dp = reinterpret_cast<const VecProblem*>(base);
    const auto* da = reinterpret_cast<const int64_t*>(base + problems.size() * sizeof(VecProblem));
    const auto* db = da + sa.size();
    check_launch(multi_expand_vec_bwd_launch(elem_type(dtype), dp, da, sa.back(), db, sb.back(),
                                             static_cast<int>(problems.size()), stream),
                 op);
  }
}

}  // namespace

std::vector<Tensor> multi_expand_vec_cuda(at::TensorList b, at::TensorList depth, at::TensorList E_out,
                                          at::TensorList residual, at::IntArrayRef E_out_index,
                                          at::IntArrayRef residual_index) {
  const char* op = "ligo_fast::multi_expand_vec";
  if (b.empty()) return {};
  const c10::cuda::CUDAGuard guard(b[0].device());
  VecCall call = prepare_vec_forward(op, b, depth, gather_optional(op, "E_out", E_out, E_out_index),
                                     gather_optional(op, "residual", residual, residual_index));
  run_forward(call, b[0].device(), op);
  return call.outs;
}

std::vector<Tensor> multi_expand_vec_backward_cuda(at::TensorList grad, at::TensorList b, at::TensorList depth,
                                                   at::TensorList E_out, at::IntArrayRef E_out_index) {
  const char* op = "ligo_fast::multi_expand_vec_backward";
  if (b.empty()) return {};
  const c10::cuda::CUDAGuard guard(b[0].device());
  VecCall call = prepare_vec_backward(op, grad, b, depth, gather_optional(op, "E_out", E_out, E_out_index));
  run_backward(call, b[0].device(), op);
  return call.outs;
}

Tensor expand_vec_cpp_cuda(const Tensor& b, const Tensor& depth, const OptTensor& E_out, const OptTensor& residual) {
  const char* op = "ligo_fast::expand_vec_cpp";
  const c10::cuda::CUDAGuard guard(b.device());
  VecCall call = prepare_vec_forward(op, {b}, {depth}, OptTensors{E_out}, OptTensors{residual});
  run_forward(call, b.device(), op);
  return call.outs[0];
}

std::vector<Tensor> expand_vec_cpp_backward_cuda(const Tensor& grad, const Tensor& b, const Tensor& depth,
                                                 const OptTensor& E_out) {
  const char* op = "ligo_fast::expand_vec_cpp_backward";
  const c10::cuda::CUDAGuard guard(b.device());
  VecCall call = prepare_vec_backward(op, {grad}, {b}, {depth}, OptTensors{E_out});
  run_backward(call, b.device(), op);
  return call.outs;
}

TORCH_LIBRARY_IMPL(ligo_fast, CUDA, m) {
  m.impl("expand_vec_cpp", &expand_vec_cpp_cuda);
  m.impl("expand_vec_cpp_backward", &expand_vec_cpp_backward_cuda);
  m.impl("multi_expand_vec", &multi_expand_vec_cuda);
  m.impl("multi_expand_vec_backward", &multi_expand_vec_backward_cuda);
}

}  // namespace ligo_fast
