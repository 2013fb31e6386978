// CUDA kernel of lrp_additive_attention (docs/LRP_RULES.md, "Additive (adaptive) attention"): the context and the small
// per-context factors by ATen/cuBLAS, then one grid-stride pass writing every output element once.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../common/cuda_launch.cuh"
#include "../../common/precision.h"
#include "../lrp_additive_attention.h"

namespace capxai {
namespace {

// Rows (k, b, n) along y, the value dimension along x (row_launch): the row's indices are computed once per row, not
// by a 64-bit division per element (which held the first version at a fifth of the copy bandwidth on an H100).
template <typename scalar_t>
__global__ void additive_attention_kernel(const scalar_t* __restrict__ v, const scalar_t* __restrict__ w,
                                          const scalar_t* __restrict__ r, const scalar_t* __restrict__ s,
                                          scalar_t* __restrict__ o, int64_t rows, int64_t batch, int64_t n_values,
                                          int64_t dim, int* __restrict__ non_finite) {
  for (int64_t row = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; row < rows;
       row += int64_t(gridDim.y) * blockDim.y) {
    const int64_t kb = row / n_values, n = row - kb * n_values, b = kb % batch;
    const scalar_t weight = w[b * n_values + n];
    const scalar_t* v_row = v + (b * n_values + n) * dim;
    const scalar_t* r_row = r + kb * dim;
    const scalar_t* s_row = s != nullptr ? s + kb * dim : nullptr;
    scalar_t* o_row = o + row * dim;
    int bad = 0;
    for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < dim; d += int64_t(gridDim.x) * blockDim.x) {
      scalar_t value = weight * v_row[d] * r_row[d];
      if (s_row != nullptr) value += s_row[d];
      o_row[d] = value;
      bad |= !isfinite(value);
    }
    if (bad) *non_finite = 1;
  }
}

at::Tensor lrp_additive_attention_cuda(const at::Tensor& values, const at::Tensor& weights,
                                       const at::Tensor& relevance, double eps, double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const AdditiveAttentionArgs args = check_lrp_additive_attention_args(values, weights, relevance, eps, bias_factor);
  const c10::cuda::CUDAGuard device_guard(args.values.device());
  const int64_t targets = args.relevance.size(0), batch = args.values.size(0);
  const int64_t n_values = args.values.size(1), dim = args.values.size(2);
  at::Tensor non_finite = at::zeros({1}, args.values.options().dtype(at::kInt));
  auto [ratio, share] = additive_attention_ratio(args, eps, bias_factor, non_finite);
  at::Tensor out = at::empty({targets, batch, n_values, dim}, args.values.options());
  if (out.numel() == 0) {
    out = out.to(args.result_dtype);
    return args.had_target_dim ? out : out.squeeze(0);
  }
  AT_DISPATCH_FLOATING_TYPES(args.values.scalar_type(), "lrp_additive_attention_cuda", [&] {
    const int64_t rows = targets * batch * n_values;
    const RowLaunch launch = row_launch(rows, dim);
    additive_attention_kernel<scalar_t><<<launch.grid, launch.block, 0, at::cuda::getCurrentCUDAStream()>>>(
        args.values.const_data_ptr<scalar_t>(), args.weights.const_data_ptr<scalar_t>(),
        ratio.const_data_ptr<scalar_t>(), share.defined() ? share.const_data_ptr<scalar_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), rows, batch, n_values, dim, non_finite.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  out = round_to(out, args.result_dtype, non_finite);
  if (non_finite.item<int>() != 0) raise_additive_attention_non_finite(args);  // the call's one host sync
  return args.had_target_dim ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CUDA, m) {
  m.impl("lrp_additive_attention", &lrp_additive_attention_cuda);
}

}  // namespace capxai
