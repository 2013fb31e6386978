// lrp_linear: the epsilon rule of docs/LRP_RULES.md ("Linear / elementwise sum") for z = x W^T + b.
//   x [N, In], weight [Out, In], bias [Out] or None, relevance [N, Out] or [K, N, Out]  ->  [N, In] or [K, N, In]
//   R_x[k, n, i] = x[n, i] * sum_j W[j, i] * R[k, n, j] / stab(z[n, j])
//                + bias_factor / In * sum_j (b_j + eps * sign(z[n, j])) * R[k, n, j] / stab(z[n, j])
// The forward z is computed once and shared by all K targets.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace capxai {

// Validated, contiguous arguments, with relevance viewed as [K, N, Out].
struct LinearArgs {
  at::Tensor x;          // [N, In]
  at::Tensor weight;     // [Out, In]
  at::Tensor bias;       // [Out] or undefined
  at::Tensor relevance;  // [K, N, Out]
  bool had_target_dim;   // relevance came as [K, N, Out] (else [N, Out])
  at::ScalarType result_dtype;  // the caller's dtype; the tensors above are in the compute dtype (precision.h)
  double eps = -1.0;     // the stabiliser (named when a denominator is 0)
};

// Checks every argument (rank, sizes, dtype, device) and throws a message naming the bad one. Finiteness is checked
// inside the kernels' own passes (no extra pass over memory); when they find NaN/Inf they call raise_non_finite.
LinearArgs check_lrp_linear_args(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& relevance, double eps,
                                 double bias_factor);

// Names the argument holding NaN/Inf (a slow, rare path), or says that the computation overflowed.
[[noreturn]] void raise_non_finite(const LinearArgs& args);

// Result [K, N, In] back to the caller's rank (rounding to the caller's dtype is the kernels' last step).
inline at::Tensor restore_target_dim(const at::Tensor& result, const LinearArgs& args) {
  return args.had_target_dim ? result : result.squeeze(0);
}

at::Tensor lrp_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& relevance, double eps, double bias_factor);

}  // namespace capxai
