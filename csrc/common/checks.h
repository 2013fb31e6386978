// Argument checks shared by every op and backend. Each message names the op, the argument, what was expected and
// what arrived, e.g. "lrp_linear: x must be [N, In], got [5, 3, 7]".
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>

namespace capxai {

// dtype: float32 or float64 (TypeError in Python).
inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " must be a tensor, got None");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t.scalar_type());
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

inline void check_hyperparameters(double eps, double bias_factor, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(bias_factor), op, ": bias_factor must be finite, got ", bias_factor);
}

}  // namespace capxai
