// CPU kernels of lrp_sdpa and lrp_sdpa_attnlrp (docs/LRP_RULES.md, "Scaled dot-product attention"): the forward and the
// small factors by ATen (lrp_sdpa.cpp); relevance_v, the output-sized part, either in one fused pass that writes
// each element once, out[k, b, h, j, :] = v[j, :] * sum_i A[i, j] ratio[k, i, :] (+ absorbed share), or after the
// GEMMs of the GEMM formulation by a fused elementwise epilogue (lrp_sdpa.h, sdpa_use_gemm picks).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <type_traits>

#include "../../common/cpu_simd.h"
#include "../../common/finite.h"
#include "../lrp_sdpa.h"

namespace capxai {
namespace {

// kBlock columns of one output row, accumulated in registers (a fixed block size lets the compiler keep the
// accumulators in vector registers across the loop over queries i):
//   out[e] = scale * (v[e] * sum_i A[i * a_stride] ratio[i, e] + sum_i allowed[i * allowed_stride] share[i, e]).
template <int kBlock, typename scalar_t>
inline int value_block(const scalar_t* a, int64_t a_stride, const scalar_t* ratio, const scalar_t* allowed,
                       int64_t allowed_stride, const scalar_t* share, const scalar_t* v, scalar_t scale,
                       int64_t n_queries, int64_t dim, scalar_t* out) {
  scalar_t acc[kBlock] = {};
  for (int64_t i = 0; i < n_queries; ++i) {
    const scalar_t weight = a[i * a_stride];
    const scalar_t* row = ratio + i * dim;
    for (int e = 0; e < kBlock; ++e) acc[e] += weight * row[e];
  }
  for (int e = 0; e < kBlock; ++e) acc[e] *= v[e];
  if (share != nullptr) {
    for (int64_t i = 0; i < n_queries; ++i) {
      const scalar_t weight = allowed != nullptr ? allowed[i * allowed_stride] : scalar_t(1);
      const scalar_t* row = share + i * dim;
      for (int e = 0; e < kBlock; ++e) acc[e] += weight * row[e];
    }
  }
  int non_finite = 0;
  for (int e = 0; e < kBlock; ++e) {
    out[e] = scale * acc[e];
    non_finite |= non_finite_flag(out[e]);
  }
  return non_finite;
}

// One output row (k, b, h, j) of relevance_v, in blocks of the value dimension; returns whether any is NaN/Inf.
template <typename scalar_t>
CAPXAI_SIMD_CLONES int value_row(const scalar_t* a, int64_t a_stride, const scalar_t* ratio, const scalar_t* allowed,
                                 int64_t allowed_stride, const scalar_t* share, const scalar_t* v, scalar_t scale,
                                 int64_t n_queries, int64_t dim, scalar_t* out) {
  int non_finite = 0;
  int64_t e = 0;
  const auto block = [&](auto size) {
    constexpr int kSize = decltype(size)::value;
    for (; e + kSize <= dim; e += kSize)
      non_finite |= value_block<kSize>(a, a_stride, ratio + e, allowed, allowed_stride,
                                       share != nullptr ? share + e : nullptr, v + e, scale, n_queries, dim, out + e);
  };
  block(std::integral_constant<int, 64>{});
  block(std::integral_constant<int, 8>{});
  block(std::integral_constant<int, 1>{});
  return non_finite;
}

struct CpuSdpa {
  static void fused_value_pass(const SdpaArgs& args, const SdpaForward& fwd, const at::Tensor& ratio,
                               const at::Tensor& share, double factor, at::Tensor& out) {
    const int64_t targets = out.size(0), batch = out.size(1), heads = out.size(2);
    const int64_t n_keys = out.size(3), dim_v = out.size(4), n_queries = fwd.weights.size(2);
    std::atomic<bool> finite{true};
    // Keys-major copies ([B, h, Lk, Lq], small): each output row reads its column of A contiguously.
    const at::Tensor attention_by_key = fwd.weights.transpose(-2, -1).contiguous();
    const at::Tensor allowed_by_key =
        fwd.allowed.defined() ? fwd.allowed.transpose(-2, -1).contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lrp_sdpa_value_cpu", [&] {
      const scalar_t* v = args.v.const_data_ptr<scalar_t>();
      const scalar_t* attention = attention_by_key.const_data_ptr<scalar_t>();
      const scalar_t* allowed = allowed_by_key.defined() ? allowed_by_key.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* r = ratio.const_data_ptr<scalar_t>();
      const scalar_t* s = share.defined() ? share.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const int64_t grain =
          std::max<int64_t>(1, 32768 / std::max<int64_t>(1, dim_v * std::max<int64_t>(1, n_queries)));
      at::parallel_for(0, targets * batch * heads * n_keys, grain, [&](int64_t begin, int64_t end) {
        int non_finite = 0;
        for (int64_t row = begin; row < end; ++row) {  // row = (k, b, h, j)
          const int64_t kbh = row / n_keys, j = row % n_keys, bh = kbh % (batch * heads);
          const int64_t column = (bh * n_keys + j) * n_queries;
          non_finite |= value_row(attention + column, 1, r + kbh * n_queries * dim_v,
                                  allowed != nullptr ? allowed + column : nullptr, 1,
                                  s != nullptr ? s + kbh * n_queries * dim_v : nullptr,
                                  v + (bh * n_keys + j) * dim_v, static_cast<scalar_t>(factor), n_queries, dim_v,
                                  o + row * dim_v);
        }
        if (non_finite) finite.store(false);
      });
    });
    if (!finite.load()) args.flags[0].fill_(1);
  }

  static void gemm_epilogue(const SdpaArgs& args, const at::Tensor& products, const at::Tensor& shares,
                            double factor, at::Tensor& out) {
    const int64_t targets = out.size(0), batch_heads = out.size(1) * out.size(2);
    const int64_t n_keys = out.size(3), dim_v = out.size(4);
    const int64_t share_rows = shares.defined() ? shares.size(1) : 0;  // Lk, or 1 when every key gets the same
    std::atomic<bool> finite{true};
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lrp_sdpa_gemm_epilogue_cpu", [&] {
      const scalar_t* v = args.v.const_data_ptr<scalar_t>();
      const scalar_t* p = products.const_data_ptr<scalar_t>();
      const scalar_t* s = shares.defined() ? shares.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const scalar_t scale = static_cast<scalar_t>(factor);
      at::parallel_for(0, targets * batch_heads * n_keys, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, dim_v)),
                       [&](int64_t begin, int64_t end) {
        int non_finite = 0;
        for (int64_t row = begin; row < end; ++row) {  // row = (k, bh, j)
          const EpilogueRow at = epilogue_row(row, targets, batch_heads, n_keys, dim_v, share_rows);
          const scalar_t* v_row = v + at.value;
          const scalar_t* p_row = p + at.product;
          const scalar_t* s_row = s != nullptr ? s + at.share : nullptr;
          scalar_t* o_row = o + at.out;
          for (int64_t e = 0; e < dim_v; ++e) {
            const scalar_t value = scale * (v_row[e] * p_row[e] + (s_row != nullptr ? s_row[e] : scalar_t(0)));
            o_row[e] = value;
            non_finite |= non_finite_flag(value);
          }
        }
        if (non_finite) finite.store(false);
      });
    });
    if (!finite.load()) args.flags[0].fill_(1);
  }
};

at::Tensor lrp_sdpa_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& relevance,
                        const std::optional<at::Tensor>& attn_mask, double eps, double bias_factor,
                        std::optional<double> scale) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const SdpaArgs args = check_lrp_sdpa_args(q, k, v, relevance, attn_mask, eps, bias_factor, scale, "lrp_sdpa");
  return lrp_sdpa_constant<CpuSdpa>(args, eps, bias_factor);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lrp_sdpa_attnlrp_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& relevance,
    const std::optional<at::Tensor>& attn_mask, double eps, double bias_factor, std::optional<double> scale) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const SdpaArgs args =
      check_lrp_sdpa_args(q, k, v, relevance, attn_mask, eps, bias_factor, scale, "lrp_sdpa_attnlrp");
  return lrp_sdpa_attnlrp<CpuSdpa>(args, eps, bias_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_sdpa", &lrp_sdpa_cpu);
  m.impl("lrp_sdpa_attnlrp", &lrp_sdpa_attnlrp_cpu);
}

}  // namespace capxai
