// CPU kernel of lrp_additive_attention (docs/LRP_RULES.md, "Additive (adaptive) attention"): the context and the small
// per-context factors by ATen, then one fused pass writing every output element once.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "../../common/finite.h"
#include "../../common/precision.h"
#include "../lrp_additive_attention.h"

namespace capxai {
namespace {

at::Tensor lrp_additive_attention_cpu(const at::Tensor& values, const at::Tensor& weights,
                                      const at::Tensor& relevance, double eps, double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const AdditiveAttentionArgs args = check_lrp_additive_attention_args(values, weights, relevance, eps, bias_factor);
  const int64_t targets = args.relevance.size(0), batch = args.values.size(0);
  const int64_t n_values = args.values.size(1), dim = args.values.size(2);
  const at::Tensor context_non_finite = at::zeros({1}, args.values.options().dtype(at::kInt));
  auto [ratio, share] = additive_attention_ratio(args, eps, bias_factor, context_non_finite);
  at::Tensor out = at::empty({targets, batch, n_values, dim}, args.values.options());
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(args.values.scalar_type(), "lrp_additive_attention_cpu", [&] {
    const scalar_t* v = args.values.const_data_ptr<scalar_t>();
    const scalar_t* w = args.weights.const_data_ptr<scalar_t>();
    const scalar_t* r = ratio.const_data_ptr<scalar_t>();
    const scalar_t* s = share.defined() ? share.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, dim));
    at::parallel_for(0, targets * batch * n_values, grain, [&](int64_t begin, int64_t end) {
      int non_finite = 0;
      for (int64_t row = begin; row < end; ++row) {  // row = (k, b, n)
        const int64_t kb = row / n_values, n = row % n_values, b = kb % batch;
        const scalar_t weight = w[b * n_values + n];
        const scalar_t* v_row = v + (b * n_values + n) * dim;
        const scalar_t* r_row = r + kb * dim;
        scalar_t* o_row = o + row * dim;
        if (s == nullptr) {
          for (int64_t d = 0; d < dim; ++d) {
            const scalar_t value = weight * v_row[d] * r_row[d];
            o_row[d] = value;
            non_finite |= non_finite_flag(value);
          }
        } else {
          const scalar_t* s_row = s + kb * dim;
          for (int64_t d = 0; d < dim; ++d) {
            const scalar_t value = weight * v_row[d] * r_row[d] + s_row[d];
            o_row[d] = value;
            non_finite |= non_finite_flag(value);
          }
        }
      }
      if (non_finite) finite.store(false);
    });
  });
  if (!finite.load() || context_non_finite.item<int>() != 0 || !round_to_finite(out, args.result_dtype))
    raise_additive_attention_non_finite(args);
  return args.had_target_dim ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_additive_attention", &lrp_additive_attention_cpu);
}

}  // namespace capxai
