// CPU kernel of lrp_additive_attention (docs/LRP_RULES.md, "Additive (adaptive) attention"): the context and the small
// per-context factors by ATen, then one fused, vectorised pass, threads over rows, writing every output element once
// in the caller's dtype. What is left to a copy's rate is the first touch of the fresh output (a page fault per 4 KiB,
// docs/experiments/cpu-bounds): PyTorch's THP_MEM_ALLOC_ENABLE=1 puts it on huge pages.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "../../common/cpu_round.h"
#include "../../common/cpu_simd.h"
#include "../../common/finite.h"
#include "../../common/precision.h"
#include "../lrp_additive_attention.h"

namespace capxai {
namespace {

// Value rows [begin, end) of the flattened (b, n), for every target k: R_V[k, b, n] = weight * V[b, n] * ratio[k, b]
// (+ share[k, b]), computed in compute_t (float for half inputs) and rounded once, at the store, to the output dtype.
// The value rows are the outer loop so each is read from memory once and from cache K times: in (k, b, n) order every
// target re-streamed all of V, as many bytes read as written. The finite check reads the rounded value (float16
// overflows past 65504). Compiled per SIMD level (cpu_simd.h).
template <typename compute_t, typename out_t>
CAPXAI_SIMD_CLONES int additive_rows(int64_t begin, int64_t end, int64_t targets, int64_t batch, int64_t n_values,
                                     int64_t dim, const compute_t* v, const compute_t* w, const compute_t* r,
                                     const compute_t* s, out_t* o) {
  int non_finite = 0;
  for (int64_t k = 0; k < targets; ++k) {
    for (int64_t row = begin; row < end; ++row) {  // row = (b, n)
      const int64_t b = row / n_values, kb = k * batch + b;
      const compute_t weight = w[row];
      const compute_t* v_row = v + row * dim;
      const compute_t* r_row = r + kb * dim;
      out_t* o_row = o + (k * batch * n_values + row) * dim;
      if (s == nullptr) {
        for (int64_t d = 0; d < dim; ++d) non_finite |= round_store(weight * v_row[d] * r_row[d], o_row + d);
      } else {
        const compute_t* s_row = s + kb * dim;
        for (int64_t d = 0; d < dim; ++d) non_finite |= round_store(weight * v_row[d] * r_row[d] + s_row[d], o_row + d);
      }
    }
  }
  return non_finite;
}

template <typename compute_t, typename out_t>
bool fill_additive_rows(const at::Tensor& values, const at::Tensor& weights, const at::Tensor& ratio,
                        const at::Tensor& share, at::Tensor& out) {
  const int64_t targets = out.size(0), batch = values.size(0), n_values = values.size(1), dim = values.size(2);
  const compute_t* v = values.const_data_ptr<compute_t>();
  const compute_t* w = weights.const_data_ptr<compute_t>();
  const compute_t* r = ratio.const_data_ptr<compute_t>();
  const compute_t* s = share.defined() ? share.const_data_ptr<compute_t>() : nullptr;
  out_t* o = out.mutable_data_ptr<out_t>();
  std::atomic<bool> finite{true};
  // A tile of value rows (~64 KiB) stays in L2 while the K targets' output rows are written from it.
  const int64_t tile = std::max<int64_t>(1, (int64_t(64) << 10) / std::max<int64_t>(1, dim * int64_t(sizeof(compute_t))));
  at::parallel_for(0, batch * n_values, tile, [&](int64_t begin, int64_t end) {
    int non_finite = 0;
    for (int64_t first = begin; first < end; first += tile)
      non_finite |= additive_rows<compute_t, out_t>(first, std::min(end, first + tile), targets, batch, n_values, dim,
                                                    v, w, r, s, o);
    if (non_finite) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

at::Tensor lrp_additive_attention_cpu(const at::Tensor& values, const at::Tensor& weights,
                                      const at::Tensor& relevance, double eps, double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const AdditiveAttentionArgs args = check_lrp_additive_attention_args(values, weights, relevance, eps, bias_factor);
  const int64_t targets = args.relevance.size(0), batch = args.values.size(0);
  const int64_t n_values = args.values.size(1), dim = args.values.size(2);
  const at::Tensor context_non_finite = at::zeros({1}, args.values.options().dtype(at::kInt));
  auto [ratio, share] = additive_attention_ratio(args, eps, bias_factor, context_non_finite);
  // Written in the caller's dtype directly: a float32 intermediate and a rounding pass would move 3x the bytes.
  at::Tensor out = at::empty({targets, batch, n_values, dim}, args.values.options().dtype(args.result_dtype));
  bool finite = true;
  if (out.numel() > 0) {
    switch (args.result_dtype) {
      case at::kDouble: finite = fill_additive_rows<double, double>(args.values, args.weights, ratio, share, out); break;
      case at::kFloat: finite = fill_additive_rows<float, float>(args.values, args.weights, ratio, share, out); break;
      case at::kBFloat16:
        finite = fill_additive_rows<float, c10::BFloat16>(args.values, args.weights, ratio, share, out);
        break;
      case at::kHalf: finite = fill_additive_rows<float, c10::Half>(args.values, args.weights, ratio, share, out); break;
      default: TORCH_INTERNAL_ASSERT(false, "lrp_additive_attention_cpu: unexpected dtype ", args.result_dtype);
    }
  }
  if (!finite || context_non_finite.item<int>() != 0) raise_additive_attention_non_finite(args);
  return args.had_target_dim ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_additive_attention", &lrp_additive_attention_cpu);
}

}  // namespace capxai
