// lrp_sdpa / lrp_sdpa_attnlrp: LRP through multi-head scaled dot-product attention (LRP_RULES.md, "Scaled
// dot-product attention, multi-head").
//   q [B, h, Lq, d], k [B, h, Lk, d], v [B, h, Lk, dv], relevance [(K,) B, h, Lq, dv], attn_mask as in
//   torch.nn.functional.scaled_dot_product_attention (bool, True = attend, or additive float; broadcastable to
//   [B, h, Lq, Lk]).
//   "constant" (lrp_sdpa): the attention weights are constants -> relevance_v [(K,) B, h, Lk, dv].
//   "attnlrp" (lrp_sdpa_attnlrp): AttnLRP's rules -> (relevance_q, relevance_k, relevance_v).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace capxai {

struct SdpaArgs {
  at::Tensor q, k, v;     // contiguous
  at::Tensor relevance;   // [K, B, h, Lq, dv]
  at::Tensor mask;        // as given (bool or float), or undefined
  double scale;
  bool had_target_dim;
  double eps = -1.0;     // the stabiliser (named when a denominator is 0)
};

SdpaArgs check_lrp_sdpa_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& relevance, const std::optional<at::Tensor>& attn_mask, double eps,
                             double bias_factor, std::optional<double> scale, const char* op);

// The forward, recomputed once for all targets. Masked (query, key) pairs have weight 0 and score 0 (not -inf, so
// that products with them stay 0); a query whose keys are all masked attends to nothing (its row of weights is 0).
struct SdpaForward {
  at::Tensor scores;     // [B, h, Lq, Lk]: q k^T * scale + additive mask, 0 where masked
  at::Tensor weights;    // [B, h, Lq, Lk]: softmax of the scores, 0 where masked
  at::Tensor output;     // [B, h, Lq, dv]
  at::Tensor allowed;    // [B, h, Lq, Lk] 1/0 as the dtype of q, or undefined when nothing is masked
  at::Tensor mask_bias;  // [B, h, Lq, Lk] additive float mask (0 where masked), or undefined
  at::Tensor allowed_keys;  // [B, h, Lq, 1]: how many keys each query may attend to
};

SdpaForward sdpa_forward(const SdpaArgs& args);

// The epsilon rule over the terms A_ij V_je of O_ie, per target: ratio = R / stab(O) and the absorbed share each
// allowed term gets back, bias_factor * eps * sign(O) / N_i * ratio (undefined when bias_factor == 0).
std::pair<at::Tensor, at::Tensor> sdpa_output_ratio(const SdpaArgs& args, const SdpaForward& fwd, double eps,
                                                     double bias_factor);

// The rest of AttnLRP after relevance_v: relevance of A, the softmax rule, and the bilinear q k^T rule.
std::pair<at::Tensor, at::Tensor> sdpa_attnlrp_query_key(const SdpaArgs& args, const SdpaForward& fwd,
                                                         const at::Tensor& ratio, const at::Tensor& share,
                                                         double eps, double bias_factor);

[[noreturn]] void raise_sdpa_non_finite(const SdpaArgs& args, const char* op);

inline at::Tensor with_target_dim(const at::Tensor& result, const SdpaArgs& args) {
  return args.had_target_dim ? result : result.squeeze(0);
}

// The two ops over one backend's fused value pass:
//   value_pass(args, fwd, ratio, share, factor, out) writes out[k, b, h, j, e] = factor * (v[b, h, j, e] *
//   sum_i A[b, h, i, j] ratio[k, b, h, i, e] + sum_i allowed[b, h, i, j] share[k, b, h, i, e]); false on NaN/Inf.
template <typename ValuePass>
at::Tensor lrp_sdpa_constant(const SdpaArgs& args, double eps, double bias_factor, ValuePass value_pass) {
  const SdpaForward fwd = sdpa_forward(args);
  const auto [ratio, share] = sdpa_output_ratio(args, fwd, eps, bias_factor);
  at::Tensor relevance_v = at::empty({args.relevance.size(0), args.v.size(0), args.v.size(1), args.v.size(2),
                                      args.v.size(3)}, args.v.options());
  if (!value_pass(args, fwd, ratio, share, 1.0, relevance_v)) raise_sdpa_non_finite(args, "lrp_sdpa");
  return with_target_dim(relevance_v, args);
}

template <typename ValuePass>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lrp_sdpa_attnlrp(const SdpaArgs& args, double eps,
                                                                double bias_factor, ValuePass value_pass) {
  constexpr const char* op = "lrp_sdpa_attnlrp";
  const SdpaForward fwd = sdpa_forward(args);
  const auto [ratio, share] = sdpa_output_ratio(args, fwd, eps, bias_factor);
  at::Tensor relevance_v = at::empty({args.relevance.size(0), args.v.size(0), args.v.size(1), args.v.size(2),
                                      args.v.size(3)}, args.v.options());
  if (!value_pass(args, fwd, ratio, share, 0.5, relevance_v)) raise_sdpa_non_finite(args, op);
  auto [relevance_q, relevance_k] = sdpa_attnlrp_query_key(args, fwd, ratio, share, eps, bias_factor);
  if (!at::isfinite(relevance_q).all().item<bool>() || !at::isfinite(relevance_k).all().item<bool>())
    raise_sdpa_non_finite(args, op);
  return {with_target_dim(relevance_q, args), with_target_dim(relevance_k, args),
          with_target_dim(relevance_v, args)};
}

}  // namespace capxai
