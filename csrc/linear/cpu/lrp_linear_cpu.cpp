// CPU kernel of lrp_linear (docs/LRP_RULES.md, "Linear / elementwise sum — epsilon rule").
// Passes: the forward z = x W^T + b once (BLAS); one fused pass computing R / stab(z) for all K targets (plus each
// row's absorbed share when bias_factor != 0); one GEMM (BLAS) back to the inputs; one fused pass multiplying by x
// and adding the absorbed share, in place in the output. The two fused passes also detect NaN/Inf on the way (a
// non-finite input always reaches the ratio or the output), so bad input costs no extra pass over memory.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "../../common/stabilize.h"
#include "../../common/finite.h"
#include "../../common/precision.h"
#include "../lrp_linear.h"

namespace capxai {
namespace {

// Rows of work per parallel chunk: about 32k elements.
int64_t grain_for(int64_t row_length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length));
}

// ratio[r, j] = relevance[r, j] / stab(z[r % N, j]); absorbed[r] = bias_factor / In * sum_j (b_j + eps sign z) ratio.
// Returns false if any ratio or any z is NaN/Inf: an overflowed z would make the ratio a silent 0, and a NaN/Inf input
// always reaches z.
template <typename scalar_t>
bool ratio_pass(const scalar_t* relevance, const scalar_t* z, const scalar_t* bias, scalar_t* ratio,
                scalar_t* absorbed, int64_t rows, int64_t n_rows, int64_t n_out, int64_t n_in, scalar_t eps,
                double bias_factor) {
  using acc_t = at::opmath_type<scalar_t>;
  std::atomic<bool> finite{true};
  at::parallel_for(0, rows, grain_for(n_out), [&](int64_t begin, int64_t end) {
    int non_finite = 0;
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* z_row = z + (r % n_rows) * n_out;
      const scalar_t* rel_row = relevance + r * n_out;
      scalar_t* ratio_row = ratio + r * n_out;
      if (absorbed == nullptr) {
        for (int64_t j = 0; j < n_out; ++j) {
          const scalar_t s = rel_row[j] / stabilize(z_row[j], eps);
          ratio_row[j] = s;
          non_finite |= non_finite_flag(s) | non_finite_flag(z_row[j]);
        }
        continue;
      }
      acc_t absorbed_sum = 0;
      for (int64_t j = 0; j < n_out; ++j) {
        const scalar_t s = rel_row[j] / stabilize(z_row[j], eps);
        ratio_row[j] = s;
        non_finite |= non_finite_flag(s) | non_finite_flag(z_row[j]);
        const scalar_t b = bias == nullptr ? scalar_t(0) : bias[j];
        absorbed_sum += acc_t(s) * acc_t(b + eps * sign_nonneg_as_plus(z_row[j]));
      }
      absorbed[r] = scalar_t(absorbed_sum * acc_t(bias_factor) / acc_t(n_in));
    }
    if (non_finite) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// out[r, i] = x[r % N, i] * out[r, i] (+ absorbed[r]). Returns false if any result is NaN/Inf.
template <typename scalar_t>
bool input_pass(const scalar_t* x, const scalar_t* absorbed, scalar_t* out, int64_t rows, int64_t n_rows,
                int64_t n_in) {
  std::atomic<bool> finite{true};
  at::parallel_for(0, rows, grain_for(n_in), [&](int64_t begin, int64_t end) {
    int non_finite = 0;
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* x_row = x + (r % n_rows) * n_in;
      scalar_t* out_row = out + r * n_in;
      const scalar_t share = absorbed == nullptr ? scalar_t(0) : absorbed[r];
      for (int64_t i = 0; i < n_in; ++i) {
        const scalar_t value = x_row[i] * out_row[i] + share;
        out_row[i] = value;
        non_finite |= non_finite_flag(value);
      }
    }
    if (non_finite) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

}  // namespace

at::Tensor lrp_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& relevance, double eps, double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const LinearArgs args = check_lrp_linear_args(x, weight, bias, relevance, eps, bias_factor);
  const int64_t n_targets = args.relevance.size(0);
  const int64_t n_rows = args.x.size(0);
  const int64_t n_in = args.x.size(1);
  const int64_t n_out = args.weight.size(0);
  const int64_t rows = n_targets * n_rows;

  const at::Tensor z = at::linear(args.x, args.weight, args.bias);
  at::Tensor ratio = at::empty_like(args.relevance);
  const bool spread_bias = bias_factor != 0.0 && n_in > 0;
  at::Tensor absorbed = spread_bias ? at::empty({rows}, args.x.options()) : at::Tensor();
  at::Tensor out = at::empty({n_targets, n_rows, n_in}, args.x.options());

  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(args.x.scalar_type(), "lrp_linear_cpu", [&] {
    finite = ratio_pass<scalar_t>(args.relevance.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                                  args.bias.defined() ? args.bias.const_data_ptr<scalar_t>() : nullptr,
                                  ratio.mutable_data_ptr<scalar_t>(),
                                  spread_bias ? absorbed.mutable_data_ptr<scalar_t>() : nullptr, rows, n_rows, n_out,
                                  n_in, static_cast<scalar_t>(eps), bias_factor);
    if (!finite) return;
    at::Tensor out_rows = out.view({rows, n_in});
    at::mm_out(out_rows, ratio.view({rows, n_out}), args.weight);
    finite = input_pass<scalar_t>(args.x.const_data_ptr<scalar_t>(),
                                  spread_bias ? absorbed.const_data_ptr<scalar_t>() : nullptr,
                                  out.mutable_data_ptr<scalar_t>(), rows, n_rows, n_in);
  });
  if (!finite || !round_to_finite(out, args.result_dtype)) raise_non_finite(args);
  return restore_target_dim(out, args);
}

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_linear", &lrp_linear_cpu);
}

}  // namespace capxai
