// ligo_fast C++ ops: the LiGO growth operator for weight matrices (ATen GEMMs written into slices of the
// output) and the multi-tensor vector expansion (at::parallel_for on CPU; csrc/cuda/ for CUDA).
//
// Shapes (see ligo_fast/reference.py):
//   W (L1, o1, i1), depth (L2, L1), E_out (L2, o2-o1, o1) | (o2-o1, o1) | None, E_in likewise, residual (L2, o2, i2)
//   out[l] = [I; E_out[l]] @ (sum_j depth[l, j] W[j]) @ [I; E_in[l]]^T (+ residual[l])
// Accumulation in fp32 (fp64 for fp64). Fake (meta) and autograd registrations live in ligo_fast/extension.py.
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "ligo_ops.h"

namespace ligo_fast {

namespace {

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_dtype(const char* op, const char* name, const Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
              " has unsupported dtype ", s, "; expected float16, bfloat16, float32 or float64");
}

// `t` must share device and dtype with the problem's first tensor `ref`.
void check_like(const char* op, const std::string& name, const Tensor& t, const std::string& ref_name,
                const Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; all tensors must be on one device");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has dtype ", ref.scalar_type(), "; all tensors of one problem must share one dtype");
}

// Checks a width matrix E for `L2` layers and small size `small`; returns the large size.
int64_t check_width(const char* op, const std::string& name, const OptTensor& E, int64_t L2, int64_t small) {
  if (!E.has_value()) return small;
  const Tensor& e = *E;
  TORCH_CHECK(e.dim() == 2 || e.dim() == 3, op, ": ", name, " must be (L2, large-small, small) or (large-small, small), got ",
              e.sizes());
  TORCH_CHECK(e.dim() == 2 || e.size(0) == L2, op, ": ", name, " has ", e.size(0), " layers but depth has L2=", L2);
  TORCH_CHECK(e.size(-1) == small, op, ": ", name, " has ", e.size(-1), " columns but the small size is ", small,
              ", shape ", e.sizes());
  return small + e.size(-2);
}

// E as a batch of L2 matrices (a shared E is expanded, no copy).
Tensor batched(const Tensor& E, int64_t L2) { return E.dim() == 3 ? E : E.expand({L2, E.size(0), E.size(1)}); }

OptTensor cast_opt(const OptTensor& t, at::ScalarType ct) {
  return t.has_value() ? OptTensor(t->to(ct)) : std::nullopt;
}

struct ExpandDims {
  int64_t L1, L2, o1, i1, o2, i2;
};

ExpandDims check_expand(const char* op, const Tensor& W, const Tensor& depth, const OptTensor& E_out,
                        const OptTensor& E_in, const OptTensor& residual) {
  check_dtype(op, "W", W);
  TORCH_CHECK(W.dim() == 3, op, ": W must be (L1, out, in), got ", W.sizes());
  check_like(op, "depth", depth, "W", W);
  TORCH_CHECK(depth.dim() == 2 && depth.size(1) == W.size(0), op, ": depth must be (L2, L1=", W.size(0), "), got ",
              depth.sizes());
  if (E_out.has_value()) check_like(op, "E_out", *E_out, "W", W);
  if (E_in.has_value()) check_like(op, "E_in", *E_in, "W", W);
  ExpandDims d{W.size(0), depth.size(0), W.size(1), W.size(2), 0, 0};
  d.o2 = check_width(op, "E_out", E_out, d.L2, d.o1);
  d.i2 = check_width(op, "E_in", E_in, d.L2, d.i1);
  if (residual.has_value()) {
    check_like(op, "residual", *residual, "W", W);
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({d.L2, d.o2, d.i2}), op, ": residual must be (", d.L2, ", ",
                d.o2, ", ", d.i2, "), got ", residual->sizes());
  }
  return d;
}

// Products written into a slice of the output. ATen's *_out kernels compute a non-contiguous `out` through a
// proxy tensor plus a copy, and on CPU its batched GEMM into such a slice took a per-matrix path measured 4-10x
// slower (a (12, 256, 768) block of a (12, 768, 768) output: ~380 ms vs ~40 ms for the contiguous product); so a
// contiguous slice is written in place and any other gets one contiguous product and one copy.
void mm_into(Tensor out, const Tensor& a, const Tensor& b) {
  if (out.is_contiguous()) {
    at::mm_out(out, a, b);
  } else {
    out.copy_(at::mm(a, b));
  }
}
void bmm_into(Tensor out, const Tensor& a, const Tensor& b) {
  if (out.is_contiguous()) {
    at::bmm_out(out, a, b);
  } else {
    out.copy_(at::bmm(a, b));
  }
}

// Same rule as ligo_fast.reference.in_first: expanding the smaller side last costs fewer FLOPs.
bool in_first(int64_t o1, int64_t i1) { return o1 <= i1; }

}  // namespace

ElemType elem_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return ElemType::kFloat16;
    case at::kBFloat16:
      return ElemType::kBFloat16;
    case at::kDouble:
      return ElemType::kFloat64;
    default:
      return ElemType::kFloat32;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Matrix op: ATen GEMMs on any device, each product written straight into its slice of the output.

Tensor expand_impl(const Tensor& W, const Tensor& depth, const OptTensor& E_out, const OptTensor& E_in,
                   const OptTensor& residual) {
  const char* op = "ligo_fast::expand_cpp";
  const ExpandDims s = check_expand(op, W, depth, E_out, E_in, residual);
  c10::OptionalDeviceGuard guard(W.device());
  const auto ct = compute_type(W.scalar_type());
  const Tensor Wc = W.to(ct), dc = depth.to(ct);
  const OptTensor Eo = cast_opt(E_out, ct), Ei = cast_opt(E_in, ct);
  const int64_t L1 = s.L1, L2 = s.L2, o1 = s.o1, i1 = s.i1, o2 = s.o2, i2 = s.i2;

  Tensor out = at::empty({L2, o2, i2}, W.options().dtype(ct));
  Tensor Wm;  // (L2, o1, i1) depth-mixed weights
  if (i2 == i1) {
    // The top-left block is a (L2, o1*i1) matrix with row stride o2*i1: the depth mix lands in place.
    mm_into(out.view({L2, o2 * i1}).narrow(1, 0, o1 * i1), dc, Wc.reshape({L1, o1 * i1}));
    Wm = out.narrow(1, 0, o1);
  } else {
    Wm = at::mm(dc, Wc.reshape({L1, o1 * i1})).view({L2, o1, i1});
  }
  if (in_first(o1, i1)) {
    Tensor top = out.narrow(1, 0, o1);  // (L2, o1, i2) = Wm @ [I; E_in]^T
    if (i2 != i1) {
      top.narrow(2, 0, i1).copy_(Wm);
      bmm_into(top.narrow(2, i1, i2 - i1), Wm, batched(*Ei, L2).transpose(1, 2));
    }
    if (o2 != o1) bmm_into(out.narrow(1, o1, o2 - o1), batched(*Eo, L2), top);
  } else {
    Tensor left = out.narrow(2, 0, i1);  // (L2, o2, i1) = [I; E_out] @ Wm
    if (i2 != i1) left.narrow(1, 0, o1).copy_(Wm);
    if (o2 != o1) bmm_into(left.narrow(1, o1, o2 - o1), batched(*Eo, L2), Wm);
    if (i2 != i1) bmm_into(out.narrow(2, i1, i2 - i1), left, batched(*Ei, L2).transpose(1, 2));
  }
  if (residual.has_value()) out.add_(*residual);
  return out.scalar_type() == W.scalar_type() ? out : out.to(W.scalar_type());
}

// Gradients [grad_W, grad_depth, grad_E_out (if E_out), grad_E_in (if E_in)]; recomputes the depth mix.
// With G = [[G11, G12], [G21, G22]] split at (o1, i1):
//   K = G21 + G22 E_in          grad_E_out[l] = K[l] Wm[l]^T
//   H = G12 + E_out^T G22       grad_E_in[l]  = H[l]^T Wm[l]
//   grad_Wm = G11 + G12 E_in + E_out^T K
std::vector<Tensor> expand_backward_impl(const Tensor& grad, const Tensor& W, const Tensor& depth,
                                         const OptTensor& E_out, const OptTensor& E_in) {
  const char* op = "ligo_fast::expand_cpp_backward";
  const ExpandDims s = check_expand(op, W, depth, E_out, E_in, std::nullopt);
  check_like(op, "grad", grad, "W", W);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({s.L2, s.o2, s.i2}), op, ": grad must be (", s.L2, ", ", s.o2, ", ",
              s.i2, "), got ", grad.sizes());
  c10::OptionalDeviceGuard guard(W.device());
  const auto ct = compute_type(W.scalar_type());
  const Tensor Wc = W.to(ct), dc = depth.to(ct), G = grad.to(ct);
  const OptTensor Eo = cast_opt(E_out, ct), Ei = cast_opt(E_in, ct);
  const int64_t L1 = s.L1, L2 = s.L2, o1 = s.o1, i1 = s.i1, no = s.o2 - s.o1, ni = s.i2 - s.i1;

  const Tensor Wm = at::mm(dc, Wc.reshape({L1, o1 * i1})).view({L2, o1, i1});
  const Tensor Gtop = G.narrow(1, 0, o1), Gbot = G.narrow(1, o1, no);
  Tensor gWm = Gtop.narrow(2, 0, i1).clone(at::MemoryFormat::Contiguous);
  Tensor gEo, gEi;
  if (Eo.has_value()) {
    const Tensor EoT = batched(*Eo, L2).transpose(1, 2);
    Tensor K = Gbot.narrow(2, 0, i1).clone(at::MemoryFormat::Contiguous);
    if (Ei.has_value()) K.baddbmm_(Gbot.narrow(2, i1, ni), batched(*Ei, L2));
    gWm.baddbmm_(EoT, K);
    if (Eo->dim() == 3) {
      gEo = at::bmm(K, Wm.transpose(1, 2));
    } else {
      gEo = at::zeros({no, o1}, Wm.options());
      for (int64_t l = 0; l < L2; ++l) gEo.addmm_(K[l], Wm[l].t());
    }
  }
  if (Ei.has_value()) {
    const Tensor G12 = Gtop.narrow(2, i1, ni);
    gWm.baddbmm_(G12, batched(*Ei, L2));
    Tensor H = G12.clone(at::MemoryFormat::Contiguous);  // (L2, o1, ni)
    if (Eo.has_value()) H.baddbmm_(batched(*Eo, L2).transpose(1, 2), Gbot.narrow(2, i1, ni));
    gEi = Ei->dim() == 3 ? at::bmm(H.transpose(1, 2), Wm)
                         : at::mm(H.view({L2 * o1, ni}).t(), Wm.reshape({L2 * o1, i1}));
  }
  const Tensor gWm2 = gWm.view({L2, o1 * i1});
  std::vector<Tensor> grads;
  grads.push_back(at::mm(dc.t(), gWm2).view({L1, o1, i1}).to(W.scalar_type()));
  grads.push_back(at::mm(gWm2, Wc.reshape({L1, o1 * i1}).t()).to(depth.scalar_type()));
  if (Eo.has_value()) grads.push_back(gEo.to(E_out->scalar_type()));
  if (Ei.has_value()) grads.push_back(gEi.to(E_in->scalar_type()));
  return grads;
}

// ---------------------------------------------------------------------------------------------------------
// Vector problems: checks and descriptors (shared by CPU and CUDA).

namespace {

std::string nth(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

VecProblem describe(const char* op, size_t i, const Tensor& b, const Tensor& depth, const OptTensor& E,
                    const Tensor& first) {
  const std::string bn = nth("b", i);
  check_dtype(op, bn.c_str(), b);
  // Problems may differ in dtype (the CUDA path launches once per dtype) but not in device.
  TORCH_CHECK(b.device() == first.device(), op, ": ", bn, " is on ", b.device(), " but b[0] is on ", first.device(),
              "; all tensors must be on one device");
  TORCH_CHECK(b.dim() == 2, op, ": ", bn, " must be (L1, out), got ", b.sizes());
  check_like(op, nth("depth", i), depth, bn, b);
  TORCH_CHECK(depth.dim() == 2 && depth.size(1) == b.size(0), op, ": ", nth("depth", i), " must be (L2, L1=",
              b.size(0), "), got ", depth.sizes());
  if (E.has_value()) check_like(op, nth("E_out", i), *E, bn, b);
  VecProblem p{};
  p.L1 = b.size(0);
  p.L2 = depth.size(0);
  p.o1 = b.size(1);
  p.o2 = check_width(op, nth("E_out", i), E, p.L2, p.o1);
  p.b = b.data_ptr();
  p.b_s0 = b.stride(0);
  p.b_s1 = b.stride(1);
  p.depth = depth.data_ptr();
  p.d_s0 = depth.stride(0);
  p.d_s1 = depth.stride(1);
  if (E.has_value()) {
    p.E = E->data_ptr();
    p.E_shared = E->dim() == 2;
    p.E_s0 = p.E_shared ? 0 : E->stride(0);
    p.E_s1 = E->stride(-2);
    p.E_s2 = E->stride(-1);
  }
  return p;
}

void check_lengths(const char* op, size_t n, size_t n2, const char* name) {
  TORCH_CHECK(n == n2, op, ": got ", n, " b tensors but ", n2, " ", name, " entries; one per problem");
}

}  // namespace

OptTensors gather_optional(const char* op, const char* name, at::TensorList dense, at::IntArrayRef index) {
  OptTensors out;
  std::vector<bool> used(dense.size(), false);
  for (size_t i = 0; i < index.size(); ++i) {
    const int64_t k = index[i];
    TORCH_CHECK(k >= -1 && k < static_cast<int64_t>(dense.size()), op, ": ", name, "_index[", i, "]=", k,
                " is out of range for ", dense.size(), " ", name, " tensors (-1 means absent)");
    if (k < 0) {
      out.emplace_back(std::nullopt);
    } else {
      TORCH_CHECK(!used[k], op, ": ", name, " tensor ", k, " is used by two problems");
      used[k] = true;
      out.emplace_back(dense[k]);
    }
  }
  TORCH_CHECK(std::all_of(used.begin(), used.end(), [](bool u) { return u; }), op, ": some ", name,
              " tensors are not referenced by ", name, "_index");
  return out;
}

VecCall prepare_vec_forward(const char* op, at::TensorList b, at::TensorList depth, const OptTensors& E_out,
                            const OptTensors& residual) {
  const size_t n = b.size();
  check_lengths(op, n, depth.size(), "depth");
  check_lengths(op, n, E_out.size(), "E_out");
  check_lengths(op, n, residual.size(), "residual");
  VecCall call;
  for (size_t i = 0; i < n; ++i) {
    const OptTensor& E = E_out[i];
    const OptTensor& R = residual[i];
    VecProblem p = describe(op, i, b[i], depth[i], E, b[0]);
    if (R.has_value()) {
      check_like(op, nth("residual", i), *R, nth("b", i), b[i]);
      TORCH_CHECK(R->sizes() == at::IntArrayRef({p.L2, p.o2}), op, ": ", nth("residual", i), " must be (", p.L2,
                  ", ", p.o2, "), got ", R->sizes());
      p.residual = R->data_ptr();
      p.r_s0 = R->stride(0);
      p.r_s1 = R->stride(1);
    }
    Tensor out = at::empty({p.L2, p.o2}, b[i].options());
    p.out = out.data_ptr();
    call.outs.push_back(out);
    call.problems.push_back(p);
    call.dtypes.push_back(b[i].scalar_type());
  }
  return call;
}

VecCall prepare_vec_backward(const char* op, at::TensorList grad, at::TensorList b, at::TensorList depth,
                             const OptTensors& E_out) {
  const size_t n = b.size();
  check_lengths(op, n, grad.size(), "grad");
  check_lengths(op, n, depth.size(), "depth");
  check_lengths(op, n, E_out.size(), "E_out");
  VecCall call;
  std::vector<Tensor> gb, gd, gE;
  for (size_t i = 0; i < n; ++i) {
    const OptTensor& E = E_out[i];
    VecProblem p = describe(op, i, b[i], depth[i], E, b[0]);
    const Tensor& g = grad[i];
    check_like(op, nth("grad", i), g, nth("b", i), b[i]);
    TORCH_CHECK(g.sizes() == at::IntArrayRef({p.L2, p.o2}), op, ": ", nth("grad", i), " must be (", p.L2, ", ", p.o2,
                "), got ", g.sizes());
    p.g = g.data_ptr();
    p.g_s0 = g.stride(0);
    p.g_s1 = g.stride(1);
    gb.push_back(at::empty({p.L1, p.o1}, b[i].options()));
    gd.push_back(at::empty({p.L2, p.L1}, depth[i].options()));
    p.gb = gb.back().data_ptr();
    p.gdepth = gd.back().data_ptr();
    if (E.has_value()) {
      gE.push_back(at::empty(E->sizes(), E->options()));
      p.gE = gE.back().data_ptr();
    }
    call.problems.push_back(p);
    call.dtypes.push_back(b[i].scalar_type());
  }
  call.outs = gb;
  call.outs.insert(call.outs.end(), gd.begin(), gd.end());
  call.outs.insert(call.outs.end(), gE.begin(), gE.end());
  return call;
}

// ---------------------------------------------------------------------------------------------------------
// Vector problems on CPU: at::parallel_for over (problem, large layer) units.

namespace {

// sum_r x[r * sx] * y[r] with 8 independent partial sums (vectorises without -ffast-math).
template <typename T, typename A>
A dot(const T* x, int64_t sx, const A* y, int64_t n) {
  A acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t r = 0;
  if (sx == 1) {
    for (; r + 8 <= n; r += 8) {
      for (int q = 0; q < 8; ++q) acc[q] += static_cast<A>(x[r + q]) * y[r + q];
    }
  }
  for (; r < n; ++r) acc[r & 7] += static_cast<A>(x[r * sx]) * y[r];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// y[r] += a * x[r * sx]
template <typename T, typename A>
void axpy(A a, const T* x, int64_t sx, A* y, int64_t n) {
  if (sx == 1) {
    for (int64_t r = 0; r < n; ++r) y[r] += a * static_cast<A>(x[r]);
  } else {
    for (int64_t r = 0; r < n; ++r) y[r] += a * static_cast<A>(x[r * sx]);
  }
}

// bm = depth[l] @ b
template <typename T, typename A>
void mix_row(const VecProblem& p, int64_t l, A* bm) {
  const T* b = static_cast<const T*>(p.b);
  const T* d = static_cast<const T*>(p.depth);
  std::fill(bm, bm + p.o1, A(0));
  for (int64_t j = 0; j < p.L1; ++j) axpy<T, A>(static_cast<A>(d[l * p.d_s0 + j * p.d_s1]), b + j * p.b_s0, p.b_s1, bm, p.o1);
}

template <typename T>
void cpu_forward_layer(const VecProblem& p, int64_t l) {
  using A = at::opmath_type<T>;
  std::vector<A> bm(p.o1);
  mix_row<T, A>(p, l, bm.data());
  const T* res = static_cast<const T*>(p.residual);
  T* out = static_cast<T*>(p.out) + l * p.o2;
  auto add_res = [&](int64_t r, A v) { return res == nullptr ? v : v + static_cast<A>(res[l * p.r_s0 + r * p.r_s1]); };
  for (int64_t r = 0; r < p.o1; ++r) out[r] = static_cast<T>(add_res(r, bm[r]));
  if (p.E == nullptr) return;
  const T* E = static_cast<const T*>(p.E) + l * p.E_s0;
  for (int64_t k = 0; k < p.o2 - p.o1; ++k) {
    out[p.o1 + k] = static_cast<T>(add_res(p.o1 + k, dot<T, A>(E + k * p.E_s1, p.E_s2, bm.data(), p.o1)));
  }
}

// Phase A of the backward for layer l: bm, gbm = g[l, :o1] + E[l]^T g[l, o1:] into the workspace, and the
// per-layer gradients that need only layer l: grad_depth[l, :], grad_E[l] (per-layer E).
template <typename T>
void cpu_backward_layer(const VecProblem& p, int64_t l) {
  using A = at::opmath_type<T>;
  A* bm = static_cast<A*>(p.ws) + l * p.o1;
  A* gbm = static_cast<A*>(p.ws) + (p.L2 + l) * p.o1;
  mix_row<T, A>(p, l, bm);
  const T* g = static_cast<const T*>(p.g) + l * p.g_s0;
  for (int64_t r = 0; r < p.o1; ++r) gbm[r] = static_cast<A>(g[r * p.g_s1]);
  if (p.E != nullptr) {
    const T* E = static_cast<const T*>(p.E) + l * p.E_s0;
    T* gE = static_cast<T*>(p.gE) + (p.E_shared ? 0 : l * (p.o2 - p.o1) * p.o1);
    for (int64_t k = 0; k < p.o2 - p.o1; ++k) {
      const A gk = static_cast<A>(g[(p.o1 + k) * p.g_s1]);
      axpy<T, A>(gk, E + k * p.E_s1, p.E_s2, gbm, p.o1);
      if (!p.E_shared) {
        T* row = gE + k * p.o1;
        for (int64_t r = 0; r < p.o1; ++r) row[r] = static_cast<T>(gk * bm[r]);
      }
    }
  }
  const T* b = static_cast<const T*>(p.b);
  T* gd = static_cast<T*>(p.gdepth) + l * p.L1;
  for (int64_t j = 0; j < p.L1; ++j) gd[j] = static_cast<T>(dot<T, A>(b + j * p.b_s0, p.b_s1, gbm, p.o1));
}

constexpr int64_t kSharedRowsPerUnit = 16;

// Phase B: unit u < L1 is grad_b[u, :] = sum_l depth[l, u] gbm[l, :]; the rest are blocks of
// kSharedRowsPerUnit rows of a shared grad_E[k, :] = sum_l g[l, o1 + k] bm[l, :].
template <typename T>
void cpu_backward_unit(const VecProblem& p, int64_t u) {
  using A = at::opmath_type<T>;
  const A* bm = static_cast<const A*>(p.ws);
  const A* gbm = bm + p.L2 * p.o1;
  std::vector<A> acc(p.o1, A(0));
  if (u < p.L1) {
    const T* d = static_cast<const T*>(p.depth);
    for (int64_t l = 0; l < p.L2; ++l) {
      const A dl = static_cast<A>(d[l * p.d_s0 + u * p.d_s1]);
      for (int64_t r = 0; r < p.o1; ++r) acc[r] += dl * gbm[l * p.o1 + r];
    }
    T* gb = static_cast<T*>(p.gb) + u * p.o1;
    for (int64_t r = 0; r < p.o1; ++r) gb[r] = static_cast<T>(acc[r]);
    return;
  }
  const T* g = static_cast<const T*>(p.g);
  const int64_t k_end = std::min(p.o2 - p.o1, (u - p.L1 + 1) * kSharedRowsPerUnit);
  for (int64_t k = (u - p.L1) * kSharedRowsPerUnit; k < k_end; ++k) {
    std::fill(acc.begin(), acc.end(), A(0));
    for (int64_t l = 0; l < p.L2; ++l) {
      const A gk = static_cast<A>(g[l * p.g_s0 + (p.o1 + k) * p.g_s1]);
      for (int64_t r = 0; r < p.o1; ++r) acc[r] += gk * bm[l * p.o1 + r];
    }
    T* row = static_cast<T*>(p.gE) + k * p.o1;
    for (int64_t r = 0; r < p.o1; ++r) row[r] = static_cast<T>(acc[r]);
  }
}

// Runs fn(problem index, unit) for every unit of every problem, in parallel over the flattened units.
template <typename Units, typename Fn>
void for_each_unit(const VecCall& call, Units units, Fn fn) {
  std::vector<int64_t> start(call.problems.size() + 1, 0);
  for (size_t i = 0; i < call.problems.size(); ++i) start[i + 1] = start[i] + units(call.problems[i]);
  at::parallel_for(0, start.back(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const size_t i = std::upper_bound(start.begin(), start.end(), u) - start.begin() - 1;
      fn(i, u - start[i]);
    }
  });
}

void cpu_forward(VecCall& call) {
  for_each_unit(call, [](const VecProblem& p) { return p.L2; }, [&](size_t i, int64_t l) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.dtypes[i], "multi_expand_vec_cpu",
                                    [&] { cpu_forward_layer<scalar_t>(call.problems[i], l); });
  });
}

void cpu_backward(VecCall& call) {
  std::vector<Tensor> ws;
  for (size_t i = 0; i < call.problems.size(); ++i) {
    VecProblem& p = call.problems[i];
    ws.push_back(at::empty({2 * p.L2 * p.o1}, at::TensorOptions().dtype(compute_type(call.dtypes[i]))));
    p.ws = ws.back().data_ptr();
  }
  for_each_unit(call, [](const VecProblem& p) { return p.L2; }, [&](size_t i, int64_t l) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.dtypes[i], "multi_expand_vec_backward_cpu",
                                    [&] { cpu_backward_layer<scalar_t>(call.problems[i], l); });
  });
  auto units_b = [](const VecProblem& p) {
    const bool shared = p.E != nullptr && p.E_shared;
    return p.L1 + (shared ? (p.o2 - p.o1 + kSharedRowsPerUnit - 1) / kSharedRowsPerUnit : 0);
  };
  for_each_unit(call, units_b, [&](size_t i, int64_t u) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.dtypes[i], "multi_expand_vec_backward_cpu",
                                    [&] { cpu_backward_unit<scalar_t>(call.problems[i], u); });
  });
}

OptTensors one(const OptTensor& t) { return OptTensors{t}; }

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Op entry points (CPU; the matrix op's CUDA entry is the same ATen code) and schemas.

Tensor expand_cpp_cpu(const Tensor& W, const Tensor& depth, const OptTensor& E_out, const OptTensor& E_in,
                      const OptTensor& residual) {
  return expand_impl(W, depth, E_out, E_in, residual);
}

std::vector<Tensor> expand_cpp_backward_cpu(const Tensor& grad, const Tensor& W, const Tensor& depth,
                                            const OptTensor& E_out, const OptTensor& E_in) {
  return expand_backward_impl(grad, W, depth, E_out, E_in);
}

// cuBLAS through ATen: the GEMMs are the whole cost, nothing for a custom kernel to win.
Tensor expand_cpp_cuda(const Tensor& W, const Tensor& depth, const OptTensor& E_out, const OptTensor& E_in,
                       const OptTensor& residual) {
  return expand_impl(W, depth, E_out, E_in, residual);
}

std::vector<Tensor> expand_cpp_backward_cuda(const Tensor& grad, const Tensor& W, const Tensor& depth,
                                             const OptTensor& E_out, const OptTensor& E_in) {
  return expand_backward_impl(grad, W, depth, E_out, E_in);
}

std::vector<Tensor> multi_expand_vec_cpu(at::TensorList b, at::TensorList depth, at::TensorList E_out,
                                         at::TensorList residual, at::IntArrayRef E_out_index,
                                         at::IntArrayRef residual_index) {
  const char* op = "ligo_fast::multi_expand_vec";
  VecCall call = prepare_vec_forward(op, b, depth, gather_optional(op, "E_out", E_out, E_out_index),
                                     gather_optional(op, "residual", residual, residual_index));
  cpu_forward(call);
  return call.outs;
}

std::vector<Tensor> multi_expand_vec_backward_cpu(at::TensorList grad, at::TensorList b, at::TensorList depth,
                                                  at::TensorList E_out, at::IntArrayRef E_out_index) {
  const char* op = "ligo_fast::multi_expand_vec_backward";
  VecCall call = prepare_vec_backward(op, grad, b, depth, gather_optional(op, "E_out", E_out, E_out_index));
  cpu_backward(call);
  return call.outs;
}

Tensor expand_vec_cpp_cpu(const Tensor& b, const Tensor& depth, const OptTensor& E_out, const OptTensor& residual) {
  VecCall call = prepare_vec_forward("ligo_fast::expand_vec_cpp", {b}, {depth}, one(E_out), one(residual));
  cpu_forward(call);
  return call.outs[0];
}

std::vector<Tensor> expand_vec_cpp_backward_cpu(const Tensor& grad, const Tensor& b, const Tensor& depth,
                                                const OptTensor& E_out) {
  VecCall call = prepare_vec_backward("ligo_fast::expand_vec_cpp_backward", {grad}, {b}, {depth}, one(E_out));
  cpu_backward(call);
  return call.outs;
}

// LIGO_FAST_NO_REGISTER: the helpers above without the op registrations (the CPU emulation of the CUDA kernels,
// csrc/cuda/emu/, links them beside the real extension in one process).
#ifndef LIGO_FAST_NO_REGISTER
TORCH_LIBRARY(ligo_fast, m) {
  m.def("expand_cpp(Tensor W, Tensor depth, Tensor? E_out, Tensor? E_in, Tensor? residual) -> Tensor");
  m.def("expand_cpp_backward(Tensor grad, Tensor W, Tensor depth, Tensor? E_out, Tensor? E_in) -> Tensor[]");
  m.def("expand_vec_cpp(Tensor b, Tensor depth, Tensor? E_out, Tensor? residual) -> Tensor");
  m.def("expand_vec_cpp_backward(Tensor grad, Tensor b, Tensor depth, Tensor? E_out) -> Tensor[]");
  // E_out / residual hold the problems' present tensors; *_index[i] is problem i's position in them or -1.
  m.def(
      "multi_expand_vec(Tensor[] b, Tensor[] depth, Tensor[] E_out, Tensor[] residual, int[] E_out_index, "
      "int[] residual_index) -> Tensor[]");
  m.def(
      "multi_expand_vec_backward(Tensor[] grad, Tensor[] b, Tensor[] depth, Tensor[] E_out, int[] E_out_index) "
      "-> Tensor[]");
}

TORCH_LIBRARY_IMPL(ligo_fast, CPU, m) {
  m.impl("expand_cpp", &expand_cpp_cpu);
  m.impl("expand_cpp_backward", &expand_cpp_backward_cpu);
  m.impl("expand_vec_cpp", &expand_vec_cpp_cpu);
  m.impl("expand_vec_cpp_backward", &expand_vec_cpp_backward_cpu);
  m.impl("multi_expand_vec", &multi_expand_vec_cpu);
  m.impl("multi_expand_vec_backward", &multi_expand_vec_backward_cpu);
}

// The vector ops' CUDA kernels are registered by csrc/cuda/ligo_ops_cuda.cpp when built with CUDA.
TORCH_LIBRARY_IMPL(ligo_fast, CUDA, m) {
  m.impl("expand_cpp", &expand_cpp_cuda);
  m.impl("expand_cpp_backward", &expand_cpp_backward_cuda);
}
#endif  // LIGO_FAST_NO_REGISTER

}  // namespace ligo_fast

#ifndef LIGO_FAST_NO_REGISTER
// Lets setup.py's prebuilt `ligo_fast._C` be imported as a module; importing it runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif  // LIGO_FAST_NO_REGISTER
