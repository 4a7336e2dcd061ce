// Argument checks shared by the CPU and CUDA implementations of each op, so both reject
// the same bad input with the same message. Checks that a tensor is on a CUDA device stay
// in the CUDA files (the dispatcher already routes CPU tensors to the CPU kernels).
#pragma once
#include <cmath>
#include <cstddef>
#include <string>

#include "common.h"

namespace pyfast_gan {

// Accumulation dtype: float for half/bfloat16/float inputs, double for double. It is also
// the dtype of interpolate's alpha and of the penalty's per-sample penalty and norm.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ---- interpolate -------------------------------------------------------------------------
inline void check_interpolate_pair(const at::Tensor& real, const at::Tensor& fake) {
  PFG_CHECK_ARG(real.dim() >= 1, "real", "must have a batch dim, got a 0-d tensor");
  PFG_CHECK_ARG(real.size(0) > 0, "real", "has an empty batch (N = 0)");
  PFG_CHECK_ARG(fake.sizes() == real.sizes(), "fake", "must have the shape of real ", real.sizes(), ", got ", fake.sizes());
  PFG_CHECK_ARG(fake.scalar_type() == real.scalar_type(), "fake", "must have the dtype of real (", real.scalar_type(),
                "), got ", fake.scalar_type());
  PFG_CHECK_ARG(fake.device() == real.device(), "fake", "must be on the device of real (", real.device(), "), got ",
                fake.device());
  PFG_CHECK_ARG(at::isFloatingType(real.scalar_type()), "real", "must be a floating tensor, got ", real.scalar_type());
}

// alpha: one coefficient per sample of `like` (real, or grad_out in the backward).
inline void check_interpolate_alpha(const at::Tensor& alpha, const at::Tensor& like) {
  const int64_t N = like.size(0);
  PFG_CHECK_ARG(alpha.dim() == 1 && alpha.size(0) == N, "alpha", "must have shape (", N, ",), got ", alpha.sizes());
  PFG_CHECK_ARG(alpha.scalar_type() == acc_dtype(like.scalar_type()), "alpha", "must be ",
                acc_dtype(like.scalar_type()), ", got ", alpha.scalar_type());
  PFG_CHECK_ARG(alpha.device() == like.device(), "alpha", "must be on ", like.device());
}

inline void check_interpolate_backward(const at::Tensor& grad_out, const at::Tensor& alpha) {
  PFG_CHECK_ARG(grad_out.dim() >= 1 && grad_out.size(0) > 0, "grad_out", "must have a non-empty batch dim");
  check_interpolate_alpha(alpha, grad_out);
}

// ---- gradient_norm_penalty ---------------------------------------------------------------
enum PenaltyMode : int { kTwoSided = 0, kOneSided = 1, kZeroCentered = 2 };

inline PenaltyMode parse_penalty_mode(c10::string_view mode) {
  if (mode == "two_sided") return kTwoSided;
  if (mode == "one_sided") return kOneSided;
  if (mode == "zero_centered") return kZeroCentered;
  PFG_CHECK_ARG(false, "mode", "must be 'two_sided', 'one_sided' or 'zero_centered', got '", std::string(mode), "'");
  return kTwoSided;
}

inline void check_penalty_grad(const at::Tensor& grad) {
  PFG_CHECK_ARG(grad.dim() >= 2, "grad", "must have a batch dim and at least one more dim, got shape ", grad.sizes());
  PFG_CHECK_ARG(grad.size(0) > 0, "grad", "has an empty batch (N = 0)");
  PFG_CHECK_ARG(at::isFloatingType(grad.scalar_type()), "grad", "must be a floating tensor, got ", grad.scalar_type());
}

// The backward's per-sample inputs: (N,) tensors of the accumulation dtype on grad's device.
inline void check_penalty_backward(const at::Tensor& grad_penalty, const at::Tensor& grad, const at::Tensor& norm) {
  const int64_t N = grad.size(0);
  const auto acc = acc_dtype(grad.scalar_type());
  PFG_CHECK_ARG(grad_penalty.dim() == 1 && grad_penalty.size(0) == N, "grad_penalty", "must have shape (", N,
                ",), got ", grad_penalty.sizes());
  PFG_CHECK_ARG(norm.dim() == 1 && norm.size(0) == N, "norm", "must have shape (", N, ",), got ", norm.sizes());
  PFG_CHECK_ARG(grad_penalty.scalar_type() == acc, "grad_penalty", "must be ", acc, ", got ", grad_penalty.scalar_type());
  PFG_CHECK_ARG(norm.scalar_type() == acc, "norm", "must be ", acc, ", got ", norm.scalar_type());
  PFG_CHECK_ARG(grad_penalty.device() == grad.device(), "grad_penalty", "must be on ", grad.device());
  PFG_CHECK_ARG(norm.device() == grad.device(), "norm", "must be on ", grad.device());
}

// ---- clip_weights_ -------------------------------------------------------------------------
inline void check_clip_weights(at::TensorList tensors, double clip_value) {
  PFG_CHECK_ARG(clip_value > 0 && std::isfinite(clip_value), "clip_value", "must be a finite number > 0, got ",
                clip_value);
  for (const at::Tensor& t : tensors) {
    const auto st = t.scalar_type();
    PFG_CHECK_ARG(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, "tensors",
                  "every tensor must be floating point (float16, bfloat16, float32, float64), got ", st);
    PFG_CHECK_ARG(t.device() == tensors[0].device(), "tensors", "all tensors must be on one device, got ",
                  tensors[0].device(), " and ", t.device());
  }
}

// ---- rmsprop_clip_ -------------------------------------------------------------------------
// Each state tensor (grads, square_avgs, ...) must match its param in device, dtype, sizes
// and strides: the kernels walk all of them as one span in the same order.
inline void check_matches_param(const at::Tensor& x, const at::Tensor& p, const char* name, size_t i) {
  PFG_CHECK_ARG(x.device() == p.device() && x.scalar_type() == p.scalar_type(), name, "[", i,
                "] must match params[", i, "] in device and dtype, got ", x.device(), "/", x.scalar_type(), " vs ",
                p.device(), "/", p.scalar_type());
  PFG_CHECK_ARG(x.sizes() == p.sizes() && x.strides() == p.strides(), name, "[", i,
                "] must have the sizes and strides of params[", i, "]");
}

// Every per-tensor check of rmsprop_clip_ that does not depend on the device.
inline void rmsprop_clip_check(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                               at::TensorList grad_avgs, at::TensorList momentum_buffers, double momentum,
                               bool centered, double clip_value) {
  const size_t n = params.size();
  PFG_CHECK_ARG(grads.size() == n, "grads", "needs one tensor per param (", n, "), got ", grads.size());
  PFG_CHECK_ARG(square_avgs.size() == n, "square_avgs", "needs one tensor per param (", n, "), got ",
                square_avgs.size());
  PFG_CHECK_ARG(grad_avgs.size() == (centered ? n : 0), "grad_avgs", "needs ", centered ? n : 0,
                " tensors (centered=", centered, "), got ", grad_avgs.size());
  PFG_CHECK_ARG(momentum_buffers.size() == (momentum > 0 ? n : 0), "momentum_buffers", "needs ",
                momentum > 0 ? n : 0, " tensors (momentum=", momentum, "), got ", momentum_buffers.size());
  PFG_CHECK_ARG(clip_value > 0, "clip_value", "must be > 0 (inf disables the clamp), got ", clip_value);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const auto st = p.scalar_type();
    PFG_CHECK_ARG(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, "params",
                  "every tensor must be floating point, got ", st, " at index ", i);
    PFG_CHECK_ARG(p.device() == params[0].device(), "params", "all tensors must be on one device");
    PFG_CHECK_ARG(p.is_non_overlapping_and_dense(), "params", "tensor ", i,
                  " is not dense; step it with the reference impl");
    check_matches_param(grads[i], p, "grads", i);
    check_matches_param(square_avgs[i], p, "square_avgs", i);
    if (centered) check_matches_param(grad_avgs[i], p, "grad_avgs", i);
    if (momentum > 0) check_matches_param(momentum_buffers[i], p, "momentum_buffers", i);
  }
}

// found_inf: GradScaler's convention (a 1-element fp32 tensor, nonzero = skip the whole
// step) on the parameters' device, so the skip is decided without a host sync.
// ---- any_nonfinite ------------------------------------------------------------------------
// The four float dtypes the kernels test by exponent bits; float8 and complex are refused on
// every device (the CUDA kernel used to skip a float8 tensor silently).
inline void check_nonfinite_tensor(const at::Tensor& t, size_t i, const at::Tensor& first) {
  const auto st = t.scalar_type();
  PFG_CHECK_ARG(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, "tensors",
                "every tensor must be floating point (float32/float64/float16/bfloat16), got ", st, " at index ", i);
  PFG_CHECK_ARG(t.device() == first.device(), "tensors", "all tensors must be on one device");
}

inline void check_found_inf(const at::Tensor& found_inf, at::Device device) {
  PFG_CHECK_ARG(found_inf.numel() == 1 && found_inf.scalar_type() == at::kFloat, "found_inf",
                "must be a one-element float32 tensor, got ", found_inf.scalar_type(), " with ", found_inf.numel(),
                " elements");
  PFG_CHECK_ARG(found_inf.device() == device, "found_inf", "must be on the parameters' device (", device,
                "), got ", found_inf.device());
}

}  // namespace pyfast_gan
