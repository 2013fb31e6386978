// Argument checks shared by every op and backend. Each message names the op, the argument, what was expected and
// what arrived, e.g. "lrp_linear: x must be [N, In], got [5, 3, 7]".
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>
#include <utility>

namespace capxai {

// dtype: float16, bfloat16, float32 or float64 (TypeError in Python).
inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " must be a tensor, got None");
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

// rank (ValueError in Python); `layout` spells the expected shape, e.g. "[N, In]".
inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", layout, ", got ", t.sizes());
}

// One size of `t` must equal `expected` (which comes from `source`, e.g. "x.shape[1]").
inline void check_size(const at::Tensor& t, int64_t dim, int64_t expected, const char* op, const char* name,
                       const char* layout, const char* source) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, op, ": ", name, " must be ", layout, " with size ", expected,
                    " (", source, ") at dim ", dim, ", got ", t.sizes());
}

// Same dtype and device as the reference argument.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name, " (",
                   ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name, " (",
                    ref.device(), "), got ", t.device());
}

// NaN or Inf in an input would silently spread through every relevance it touches.
inline void check_finite(const at::Tensor& t, const char* op, const char* name) {
  if (t.numel() == 0) return;
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), op, ": ", name, " contains NaN or Inf");
}

// Names the first argument holding NaN/Inf; when none does, the cause is the computation: with eps = 0 a zero
// denominator z (e.g. all-zero inputs) gives 0/0, else a forward value or the relevance overflowed the dtype (the
// kernels flag non-finite forward values too: an overflowed z would turn R / z into a silent 0). A slow path: the kernels detect
// non-finite values on their way and only then call this.
[[noreturn]] inline void raise_first_non_finite(
    const char* op, double eps, at::ScalarType result_dtype,
    std::initializer_list<std::pair<const at::Tensor*, const char*>> arguments) {
  for (const auto& [tensor, name] : arguments) {
    if (tensor->defined()) check_finite(*tensor, op, name);
  }
  if (eps == 0.0) {
    C10_THROW_ERROR(ValueError, c10::str(op, ": the inputs are finite but the relevance is not: with eps = 0 the ",
                                         "denominator z + eps * sign(z) is the output z itself, and an output that ",
                                         "is exactly 0 (e.g. all-zero inputs) gives 0/0; use eps > 0 (the paper ",
                                         "uses 0.01)"));
  }
  C10_THROW_ERROR(ValueError, c10::str(op, ": the inputs are finite but a forward value (the layer's output, a gate's ",
                                       "pre-activation, an attention score) or the relevance overflowed ", result_dtype,
                                       result_dtype == at::kHalf ? " (largest value 65504)" : "",
                                       "; rescale the inputs or use a wider dtype (float32, float64)"));
}

inline void check_hyperparameters(double eps, double bias_factor, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(bias_factor), op, ": bias_factor must be finite, got ", bias_factor);
}

}  // namespace capxai
