// CUDA kernel of lrp_additive_attention (LRP_RULES.md, "Additive (adaptive) attention"): the context and the small
// per-context factors by ATen/cuBLAS, then one grid-stride pass writing every output element once.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../common/cuda_launch.cuh"
#include "../lrp_additive_attention.h"

namespace capxai {
namespace {

template <typename scalar_t>
__global__ void additive_attention_kernel(const scalar_t* __restrict__ v, const scalar_t* __restrict__ w,
                                          const scalar_t* __restrict__ r, const scalar_t* __restrict__ s,
                                          scalar_t* __restrict__ o, int64_t total, int64_t batch, int64_t n_values,
                                          int64_t dim, int* __restrict__ non_finite) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % dim, row = e / dim;  // row = (k, b, n)
    const int64_t kb = row / n_values, n = row % n_values, b = kb % batch;
    scalar_t value = w[b * n_values + n] * v[(b * n_values + n) * dim + d] * r[kb * dim + d];
    if (s != nullptr) value += s[kb * dim + d];
    o[e] = value;
    if (!isfinite(value)) *non_finite = 1;
  }
}

at::Tensor lrp_additive_attention_cuda(const at::Tensor& values, const at::Tensor& weights,
                                       const at::Tensor& relevance, double eps, double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const AdditiveAttentionArgs args = check_lrp_additive_attention_args(values, weights, relevance, eps, bias_factor);
  const c10::cuda::CUDAGuard device_guard(args.values.device());
  const int64_t targets = args.relevance.size(0), batch = args.values.size(0);
  const int64_t n_values = args.values.size(1), dim = args.values.size(2);
  auto [ratio, share] = additive_attention_ratio(args, eps, bias_factor);
  at::Tensor out = at::empty({targets, batch, n_values, dim}, args.values.options());
  if (out.numel() == 0) return args.had_target_dim ? out : out.squeeze(0);
  at::Tensor non_finite = at::zeros({1}, args.values.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(args.values.scalar_type(), "lrp_additive_attention_cuda", [&] {
    const int64_t blocks = blocks_for(out.numel());
    additive_attention_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        args.values.const_data_ptr<scalar_t>(), args.weights.const_data_ptr<scalar_t>(),
        ratio.const_data_ptr<scalar_t>(), share.defined() ? share.const_data_ptr<scalar_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), out.numel(), batch, n_values, dim, non_finite.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (non_finite.item<int>() != 0) raise_additive_attention_non_finite(args);
  return args.had_target_dim ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CUDA, m) {
  m.impl("lrp_additive_attention", &lrp_additive_attention_cuda);
}

}  // namespace capxai
