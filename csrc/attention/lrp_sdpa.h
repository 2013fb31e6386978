// lrp_sdpa / lrp_sdpa_attnlrp: LRP through multi-head scaled dot-product attention (docs/LRP_RULES.md, "Scaled
// dot-product attention, multi-head").
//   q [B, h, Lq, d], k [B, h, Lk, d], v [B, h, Lk, dv], relevance [(K,) B, h, Lq, dv], attn_mask as in
//   torch.nn.functional.scaled_dot_product_attention (bool, True = attend, or additive float; broadcastable to
//   [B, h, Lq, Lk]).
//   "constant" (lrp_sdpa): the attention weights are constants -> relevance_v [(K,) B, h, Lk, dv].
//   "attnlrp" (lrp_sdpa_attnlrp): AttnLRP's rules -> (relevance_q, relevance_k, relevance_v).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include <c10/macros/Macros.h>

#include "../common/precision.h"

namespace capxai {

struct SdpaArgs {
  at::Tensor q, k, v;     // contiguous, in the compute dtype (precision.h)
  at::Tensor relevance;   // [K, B, h, Lq, dv]
  at::Tensor mask;        // as given (bool, or float in the compute dtype), or undefined
  double scale;
  bool had_target_dim;
  at::ScalarType result_dtype;  // the caller's dtype
  double eps = -1.0;     // the stabiliser (named when a denominator is 0)
  // Device-side flags, read once at the end of the call (its one host synchronisation): [0] a non-finite result,
  // [1] a float mask holding NaN or +Inf.
  at::Tensor flags;
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
// allowed term gets back, bias_factor * eps * sign(O) / N_i * ratio (undefined when bias_factor == 0). Both
// [K, B, h, Lq, dv]; with `targets_inner` their memory is [B, h, Lq, K, dv] (the GEMM formulation's layout).
std::pair<at::Tensor, at::Tensor> sdpa_output_ratio(const SdpaArgs& args, const SdpaForward& fwd, double eps,
                                                     double bias_factor, bool targets_inner);

// The rest of AttnLRP after relevance_v: relevance of A, the softmax rule, and the bilinear q k^T rule.
std::pair<at::Tensor, at::Tensor> sdpa_attnlrp_query_key(const SdpaArgs& args, const SdpaForward& fwd,
                                                         const at::Tensor& ratio, const at::Tensor& share,
                                                         double eps, double bias_factor);

// How relevance_v is computed: "fused" (one pass, a loop over the queries per output element), "gemm" (batched
// GEMMs A^T @ ratio with the K targets folded into the columns, then one fused elementwise pass), or "auto" (the
// faster for the backend and shape; docs/LRP_RULES.md (Part 2), "Scaled dot-product attention"). The environment
// variable CAPXAI_SDPA_VALUE_PASS overrides "auto" (tests and benchmarks run both).
bool sdpa_use_gemm(const SdpaArgs& args);
constexpr int64_t kSdpaCpuGemmMinQueries = 64;

// The GEMM formulation's two GEMMs: T = A^T @ ratio [B*h, Lk, K*dv] and the absorbed share summed over the allowed
// queries S [B*h, Lk or 1, K*dv] (undefined without bias_factor).
std::pair<at::Tensor, at::Tensor> sdpa_value_gemms(const SdpaArgs& args, const SdpaForward& fwd,
                                                   const at::Tensor& ratio, const at::Tensor& share);

// Reads the flags (the one host synchronisation) and raises: a bad mask first, then a non-finite result.
void sdpa_check_flags(const SdpaArgs& args, const char* op);

[[noreturn]] void raise_sdpa_non_finite(const SdpaArgs& args, const char* op);

inline at::Tensor with_target_dim(const at::Tensor& result, const SdpaArgs& args) {
  return args.had_target_dim ? result : result.squeeze(0);
}

// Where one row (k, bh, j) of the GEMM epilogue reads and writes, in elements (shared by the CPU and CUDA passes):
// v[bh, j, :], products[bh, j, k, :], shares[bh, j or 0, k, :] (share_rows = Lk, or 1 without a mask; -1 without
// shares), out[k, bh, j, :].
struct EpilogueRow {
  int64_t value, product, share, out;
};

C10_HOST_DEVICE inline EpilogueRow epilogue_row(int64_t row, int64_t targets, int64_t batch_heads, int64_t n_keys,
                                                int64_t dim_v, int64_t share_rows) {
  const int64_t k = row / (batch_heads * n_keys), bhj = row - k * batch_heads * n_keys;
  const int64_t bh = bhj / n_keys, j = bhj - bh * n_keys;
  const int64_t share =
      share_rows > 0 ? ((bh * share_rows + (share_rows == 1 ? 0 : j)) * targets + k) * dim_v : int64_t(-1);
  return {bhj * dim_v, (bhj * targets + k) * dim_v, share, row * dim_v};
}

// relevance_v [K, B, h, Lk, dv] on one backend, which supplies
//   fused_value_pass(args, fwd, ratio, share, factor, out): out[k, b, h, j, e] = factor * (v[b, h, j, e] *
//     sum_i A[b, h, i, j] ratio[k, b, h, i, e] + sum_i allowed[b, h, i, j] share[k, b, h, i, e]);
//   gemm_epilogue(args, products, shares, factor, out): the same from the GEMMs' results,
//     out[k, bh, j, e] = factor * (v[bh, j, e] * products[bh, j, k, e] + shares[bh, j or 0, k, e]);
// both raise args.flags[0] on NaN/Inf.
template <typename Backend>
at::Tensor sdpa_value_relevance(const SdpaArgs& args, const SdpaForward& fwd, const at::Tensor& ratio,
                                const at::Tensor& share, double factor, bool use_gemm) {
  at::Tensor out = at::empty({args.relevance.size(0), args.v.size(0), args.v.size(1), args.v.size(2),
                              args.v.size(3)}, args.v.options());
  if (out.numel() == 0) return out;
  if (use_gemm) {
    const auto [products, shares] = sdpa_value_gemms(args, fwd, ratio, share);
    Backend::gemm_epilogue(args, products, shares, factor, out);
  } else {
    Backend::fused_value_pass(args, fwd, ratio.contiguous(), share.defined() ? share.contiguous() : share, factor,
                              out);
  }
  return out;
}

template <typename Backend>
at::Tensor lrp_sdpa_constant(const SdpaArgs& args, double eps, double bias_factor) {
  const bool use_gemm = sdpa_use_gemm(args);
  const SdpaForward fwd = sdpa_forward(args);
  const auto [ratio, share] = sdpa_output_ratio(args, fwd, eps, bias_factor, use_gemm);
  at::Tensor relevance_v = sdpa_value_relevance<Backend>(args, fwd, ratio, share, 1.0, use_gemm);
  relevance_v = round_to(relevance_v, args.result_dtype, args.flags.narrow(0, 0, 1));
  sdpa_check_flags(args, "lrp_sdpa");
  return with_target_dim(relevance_v, args);
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lrp_sdpa_attnlrp(const SdpaArgs& args, double eps,
                                                                double bias_factor) {
  const bool use_gemm = sdpa_use_gemm(args);
  const SdpaForward fwd = sdpa_forward(args);
  const auto [ratio, share] = sdpa_output_ratio(args, fwd, eps, bias_factor, use_gemm);
  at::Tensor relevance_v = sdpa_value_relevance<Backend>(args, fwd, ratio, share, 0.5, use_gemm);
  auto [relevance_q, relevance_k] = sdpa_attnlrp_query_key(args, fwd, ratio, share, eps, bias_factor);
  const at::Tensor non_finite = args.flags.narrow(0, 0, 1);
  for (const at::Tensor* result : {&relevance_q, &relevance_k})
    if (result->numel() > 0) non_finite.bitwise_or_(at::isfinite(*result).logical_not().any());
  relevance_q = round_to(relevance_q, args.result_dtype, non_finite);
  relevance_k = round_to(relevance_k, args.result_dtype, non_finite);
  relevance_v = round_to(relevance_v, args.result_dtype, non_finite);
  sdpa_check_flags(args, "lrp_sdpa_attnlrp");
  return {with_target_dim(relevance_q, args), with_target_dim(relevance_k, args),
          with_target_dim(relevance_v, args)};
}

}  // namespace capxai
