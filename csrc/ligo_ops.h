// Shared declarations of the ligo_fast C++ ops (csrc/ligo_ops.cpp) for the CUDA registrations
// (csrc/cuda/ligo_ops_cuda.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "cuda/multi_vec.h"

namespace ligo_fast {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using OptTensors = std::vector<OptTensor>;

// Optional per-problem tensors passed as a dense list plus an index per problem (-1: absent), because
// torch.library autograd tracks the elements of Tensor[] arguments but not of Tensor?[] ones.
OptTensors gather_optional(const char* op, const char* name, at::TensorList dense, at::IntArrayRef index);

// A list of vector problems, checked, with outputs allocated and descriptors filled (pointers, sizes,
// strides). `outs` is one (L2, o2) tensor per problem for the forward; for the backward it is the flat
// list [grad_b..., grad_depth..., grad_E of the problems that have an E...].
struct VecCall {
  std::vector<VecProblem> problems;
  std::vector<at::ScalarType> dtypes;
  std::vector<Tensor> outs;
};

VecCall prepare_vec_forward(const char* op, at::TensorList b, at::TensorList depth, const OptTensors& E_out,
                            const OptTensors& residual);
VecCall prepare_vec_backward(const char* op, at::TensorList grad, at::TensorList b, at::TensorList depth,
                             const OptTensors& E_out);

ElemType elem_type(at::ScalarType t);

}  // namespace ligo_fast
