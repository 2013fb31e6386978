// CPU kernels of lrp_sdpa and lrp_sdpa_attnlrp (LRP_RULES.md, "Scaled dot-product attention"): the forward and the
// small factors by ATen (lrp_sdpa.cpp); relevance_v, the output-sized part, in one fused pass that writes each
// element once: out[k, b, h, j, :] = v[j, :] * sum_i A[i, j] ratio[k, i, :] (+ absorbed share).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "../lrp_sdpa.h"

namespace capxai {
namespace {

bool value_pass_cpu(const SdpaArgs& args, const SdpaForward& fwd, const at::Tensor& ratio, const at::Tensor& share,
                    double factor, at::Tensor& out) {
  const int64_t targets = out.size(0), batch = out.size(1), heads = out.size(2);
  const int64_t n_keys = out.size(3), dim_v = out.size(4), n_queries = fwd.weights.size(2);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lrp_sdpa_value_cpu", [&] {
    const scalar_t* v = args.v.const_data_ptr<scalar_t>();
    const scalar_t* attention = fwd.weights.const_data_ptr<scalar_t>();
    const scalar_t* allowed = fwd.allowed.defined() ? fwd.allowed.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* r = ratio.const_data_ptr<scalar_t>();
    const scalar_t* s = share.defined() ? share.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(factor);
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, dim_v * std::max<int64_t>(1, n_queries)));
    at::parallel_for(0, targets * batch * heads * n_keys, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> shared(dim_v);
      scalar_t probe = 0;
      for (int64_t row = begin; row < end; ++row) {  // row = (k, b, h, j)
        const int64_t kbh = row / n_keys, j = row % n_keys, bh = kbh % (batch * heads);
        const scalar_t* a_bh = attention + bh * n_queries * n_keys;
        const scalar_t* r_kbh = r + kbh * n_queries * dim_v;
        scalar_t* o_row = o + row * dim_v;
        std::fill(o_row, o_row + dim_v, scalar_t(0));
        for (int64_t i = 0; i < n_queries; ++i) {
          const scalar_t a = a_bh[i * n_keys + j];
          const scalar_t* r_row = r_kbh + i * dim_v;
          for (int64_t e = 0; e < dim_v; ++e) o_row[e] += a * r_row[e];
        }
        const scalar_t* v_row = v + (bh * n_keys + j) * dim_v;
        if (s == nullptr) {
          for (int64_t e = 0; e < dim_v; ++e) {
            const scalar_t value = scale * v_row[e] * o_row[e];
            o_row[e] = value;
            probe += value - value;
          }
          continue;
        }
        std::fill(shared.begin(), shared.end(), scalar_t(0));
        const scalar_t* s_kbh = s + kbh * n_queries * dim_v;
        for (int64_t i = 0; i < n_queries; ++i) {
          const scalar_t weight = allowed != nullptr ? allowed[(bh * n_queries + i) * n_keys + j] : scalar_t(1);
          const scalar_t* s_row = s_kbh + i * dim_v;
          for (int64_t e = 0; e < dim_v; ++e) shared[e] += weight * s_row[e];
        }
        for (int64_t e = 0; e < dim_v; ++e) {
          const scalar_t value = scale * (v_row[e] * o_row[e] + shared[e]);
          o_row[e] = value;
          probe += value - value;
        }
      }
      if (probe != scalar_t(0)) finite.store(false);
    });
  });
  return finite.load();
}

at::Tensor lrp_sdpa_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& relevance,
                        const std::optional<at::Tensor>& attn_mask, double eps, double bias_factor,
                        std::optional<double> scale) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const SdpaArgs args = check_lrp_sdpa_args(q, k, v, relevance, attn_mask, eps, bias_factor, scale, "lrp_sdpa");
  return lrp_sdpa_constant(args, eps, bias_factor, value_pass_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lrp_sdpa_attnlrp_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& relevance,
    const std::optional<at::Tensor>& attn_mask, double eps, double bias_factor, std::optional<double> scale) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const SdpaArgs args =
      check_lrp_sdpa_args(q, k, v, relevance, attn_mask, eps, bias_factor, scale, "lrp_sdpa_attnlrp");
  return lrp_sdpa_attnlrp(args, eps, bias_factor, value_pass_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_sdpa", &lrp_sdpa_cpu);
  m.impl("lrp_sdpa_attnlrp", &lrp_sdpa_attnlrp_cpu);
}

}  // namespace capxai
