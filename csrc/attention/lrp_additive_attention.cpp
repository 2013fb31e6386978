// lrp_additive_attention: argument checks and the small per-context factors, shared by the CPU and CUDA kernels.
#include "lrp_additive_attention.h"

#include "../common/checks.h"
#include "../common/precision.h"

namespace capxai {

namespace {
constexpr const char* kOp = "lrp_additive_attention";
}

AdditiveAttentionArgs check_lrp_additive_attention_args(const at::Tensor& values, const at::Tensor& weights,
                                                        const at::Tensor& relevance, double eps,
                                                        double bias_factor) {
  check_hyperparameters(eps, bias_factor, kOp);
  check_floating(values, kOp, "values");
  check_floating(weights, kOp, "weights");
  check_floating(relevance, kOp, "relevance");
  check_like(weights, values, kOp, "weights", "values");
  check_like(relevance, values, kOp, "relevance", "values");
  check_dim(values, 3, kOp, "values", "[B, N, D]");
  check_dim(weights, 2, kOp, "weights", "[B, N]");
  check_size(weights, 0, values.size(0), kOp, "weights", "[B, N]", "B = values.shape[0]");
  check_size(weights, 1, values.size(1), kOp, "weights", "[B, N]", "N = values.shape[1]");
  TORCH_CHECK_VALUE(relevance.dim() == 2 || relevance.dim() == 3, kOp,
                    ": relevance must be [B, D] or [K, B, D], got ", relevance.sizes());
  const int64_t last = relevance.dim() - 1;
  check_size(relevance, last - 1, values.size(0), kOp, "relevance", "[(K,) B, D]", "B = values.shape[0]");
  check_size(relevance, last, values.size(2), kOp, "relevance", "[(K,) B, D]", "D = values.shape[2]");
  AdditiveAttentionArgs args;
  args.eps = eps;
  args.result_dtype = values.scalar_type();
  args.values = to_compute(values);
  args.weights = to_compute(weights);
  args.had_target_dim = relevance.dim() == 3;
  args.relevance = to_compute(args.had_target_dim ? relevance : relevance.unsqueeze(0));
  return args;
}

std::pair<at::Tensor, at::Tensor> additive_attention_ratio(const AdditiveAttentionArgs& args, double eps,
                                                           double bias_factor, const at::Tensor& non_finite) {
  const at::Tensor context = at::bmm(args.weights.unsqueeze(1), args.values).squeeze(1);  // [B, D]
  // An overflowed context would make R / context a silent 0; a device-side flag, read with the result's.
  if (context.numel() > 0) non_finite.bitwise_or_(at::isfinite(context).logical_not().any());
  const at::Tensor sign = at::where(context >= 0, 1.0, -1.0).to(context.scalar_type());
  const at::Tensor ratio = args.relevance / (context + eps * sign);  // [K, B, D]
  at::Tensor share;
  if (bias_factor != 0.0 && args.values.size(1) > 0)
    share = ratio * (sign * (bias_factor * eps / double(args.values.size(1))));
  return {ratio, share};
}

void raise_additive_attention_non_finite(const AdditiveAttentionArgs& args) {
  raise_first_non_finite(kOp, args.eps, args.result_dtype, {{&args.relevance, "relevance"}, {&args.values, "values"}, {&args.weights, "weights"}});
}

}  // namespace capxai
