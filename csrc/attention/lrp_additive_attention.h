// lrp_additive_attention: the epsilon rule over the N values of ctx_d = sum_k alpha_k V_kd, with the attention
// weights treated as constants (docs/LRP_RULES.md, "Additive (adaptive) attention"). A visual sentinel is one more value.
//   values [B, N, D], weights [B, N], relevance [(K,) B, D]  ->  relevance_values [(K,) B, N, D]
//   R_V[k, b, n, d] = (alpha[b, n] V[b, n, d] + bias_factor * eps * sign(ctx[b, d]) / N) * R[k, b, d] / stab(ctx)
#pragma once

#include <ATen/ATen.h>

namespace capxai {

struct AdditiveAttentionArgs {
  at::Tensor values;     // [B, N, D]
  at::Tensor weights;    // [B, N]
  at::Tensor relevance;  // [K, B, D]
  bool had_target_dim;
  at::ScalarType result_dtype;  // the caller's dtype; the tensors above are in the compute dtype (precision.h)
  double eps = -1.0;     // the stabiliser (named when a denominator is 0)
};

AdditiveAttentionArgs check_lrp_additive_attention_args(const at::Tensor& values, const at::Tensor& weights,
                                                        const at::Tensor& relevance, double eps, double bias_factor);

// ratio[k, b, d] = R / stab(ctx) and share[k, b, d] = bias_factor * eps * sign(ctx) / N * ratio (the part of the
// absorbed relevance each value gets back): small [K, B, D] tensors, computed with ATen ops on any device. Raises the
// int flag `non_finite` (on the values' device) when the context is NaN/Inf.
std::pair<at::Tensor, at::Tensor> additive_attention_ratio(const AdditiveAttentionArgs& args, double eps,
                                                           double bias_factor, const at::Tensor& non_finite);

[[noreturn]] void raise_additive_attention_non_finite(const AdditiveAttentionArgs& args);

}  // namespace capxai
