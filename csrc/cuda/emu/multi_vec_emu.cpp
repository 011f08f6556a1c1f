// The CUDA vector kernels of csrc/cuda/multi_vec.cu compiled as C++ against ligo_emu.h and run on the CPU, behind
// the same host-side plan as the CUDA registration (multi_vec_plan.h) and the same argument checks and output
// allocation (prepare_vec_* of ligo_ops.cpp, built here with LIGO_FAST_NO_REGISTER). Loaded by
// tests/test_cuda_emu.py with torch.utils.cpp_extension.load; never part of the installed extension.
#define LIGO_FAST_CUDA_EMU 1
#include "../multi_vec.cu"

#include <torch/extension.h>

#include "../multi_vec_plan.h"

namespace ligo_fast {
namespace {

void check(int err, const char* op) { TORCH_CHECK(err == 0, op, ": emulated kernel launch failed (", err, ")"); }

// As ligo_ops_cuda.cpp's run_forward, with host memory standing in for device memory (no upload).
void run_forward(const VecCall& call, const char* op) {
  for (auto& [dtype, problems] : vec_by_dtype(call)) {
    const auto start = vec_tile_prefix(problems, [](const VecProblem& p) { return vec_fwd_tiles(p); });
    if (start.back() == 0) continue;
    check(multi_expand_vec_fwd_launch(elem_type(dtype), problems.data(), start.data(),
                                      static_cast<int>(problems.size()), start.back(), nullptr),
          op);
  }
}

// As ligo_ops_cuda.cpp's run_backward.
void run_backward(const VecCall& call, const char* op) {
  for (auto& [dtype, problems] : vec_by_dtype(call)) {
    const Tensor ws = at::empty({vec_ws_elems(problems)}, at::TensorOptions().dtype(vec_ws_dtype(dtype)));
    vec_assign_ws(problems, ws.data_ptr(), ws.element_size());
    const auto sa = vec_tile_prefix(problems, [](const VecProblem& p) { return vec_bwd_a_tiles(p); });
    const auto sb = vec_tile_prefix(problems, [](const VecProblem& p) { return vec_bwd_b_tiles(p); });
    if (sb.back() == 0) continue;
    check(multi_expand_vec_bwd_launch(elem_type(dtype), problems.data(), sa.data(), sa.back(), sb.data(), sb.back(),
                                      static_cast<int>(problems.size()), nullptr),
          op);
  }
}

std::vector<Tensor> multi_forward(const std::vector<Tensor>& b, const std::vector<Tensor>& depth,
                                  const std::vector<Tensor>& E_out, const std::vector<Tensor>& residual,
                                  const std::vector<int64_t>& E_out_index, const std::vector<int64_t>& residual_index) {
  const char* op = "ligo_fast_emu::multi_expand_vec";
  if (b.empty()) return {};
  VecCall call = prepare_vec_forward(op, b, depth, gather_optional(op, "E_out", E_out, E_out_index),
                                     gather_optional(op, "residual", residual, residual_index));
  run_forward(call, op);
  return call.outs;
}

std::vector<Tensor> multi_backward(const std::vector<Tensor>& grad, const std::vector<Tensor>& b,
                                   const std::vector<Tensor>& depth, const std::vector<Tensor>& E_out,
                                   const std::vector<int64_t>& E_out_index) {
  const char* op = "ligo_fast_emu::multi_expand_vec_backward";
  if (b.empty()) return {};
  VecCall call = prepare_vec_backward(op, grad, b, depth, gather_optional(op, "E_out", E_out, E_out_index));
  run_backward(call, op);
  return call.outs;
}

}  // namespace
}  // namespace ligo_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "csrc/cuda/multi_vec.cu's kernels run on CPU threads (tests only)";
  m.def("multi_expand_vec", &ligo_fast::multi_forward, "same contract as torch.ops.ligo_fast.multi_expand_vec");
  m.def("multi_expand_vec_backward", &ligo_fast::multi_backward,
        "same contract as torch.ops.ligo_fast.multi_expand_vec_backward");
}
