// CUDA kernel of lrp_linear (docs/LRP_RULES.md, "Linear / elementwise sum — epsilon rule").
// Same passes as the CPU kernel: z by cuBLAS once, a fused ratio pass (one block per row when the absorbed share is
// needed, for its row sum), the GEMM back by cuBLAS, and a fused elementwise pass into the output. The fused passes
// raise a device flag on NaN/Inf, read once at the end (one synchronisation per call).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../common/cuda_launch.cuh"
#include "../../common/precision.h"
#include "../../common/stabilize.h"
#include "../lrp_linear.h"

namespace capxai {
namespace {

// ratio[e] = relevance[e] / stab(z[(e / Out) % N, e % Out]) over all K*N*Out elements.
template <typename scalar_t>
__global__ void ratio_kernel(const scalar_t* __restrict__ relevance, const scalar_t* __restrict__ z,
                             scalar_t* __restrict__ ratio, int64_t total, int64_t n_rows, int64_t n_out,
                             scalar_t eps, int* __restrict__ non_finite) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / n_out;
    const int64_t j = e - row * n_out;
    const scalar_t z_value = z[(row % n_rows) * n_out + j];
    const scalar_t s = relevance[e] / stabilize(z_value, eps);
    ratio[e] = s;
    if (!isfinite(s) || !isfinite(z_value)) *non_finite = 1;  // an overflowed z makes s a silent 0
  }
}

// One block per row: the ratio and the row's absorbed share bias_factor / In * sum_j (b_j + eps sign z) ratio.
template <typename scalar_t>
__global__ void ratio_absorbed_kernel(const scalar_t* __restrict__ relevance, const scalar_t* __restrict__ z,
                                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ ratio,
                                      scalar_t* __restrict__ absorbed, int64_t rows, int64_t n_rows,
                                      int64_t n_out, int64_t n_in, scalar_t eps, double bias_factor,
                                      int* __restrict__ non_finite) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* z_row = z + (r % n_rows) * n_out;
    acc_t sum = 0;
    for (int64_t j = threadIdx.x; j < n_out; j += blockDim.x) {
      const scalar_t s = relevance[r * n_out + j] / stabilize(z_row[j], eps);
      ratio[r * n_out + j] = s;
      if (!isfinite(s) || !isfinite(z_row[j])) *non_finite = 1;
      const scalar_t b = bias == nullptr ? scalar_t(0) : bias[j];
      sum += acc_t(s) * acc_t(b + eps * sign_nonneg_as_plus(z_row[j]));
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0) absorbed[r] = scalar_t(partial[0] * acc_t(bias_factor) / acc_t(n_in));
    __syncthreads();
  }
}

// out[e] = x[(e / In) % N, e % In] * out[e] (+ absorbed[e / In])
template <typename scalar_t>
__global__ void input_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ absorbed,
                             scalar_t* __restrict__ out, int64_t total, int64_t n_rows, int64_t n_in,
                             int* __restrict__ non_finite) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / n_in;
    const int64_t i = e - row * n_in;
    const scalar_t share = absorbed == nullptr ? scalar_t(0) : absorbed[row];
    const scalar_t value = x[(row % n_rows) * n_in + i] * out[e] + share;
    out[e] = value;
    if (!isfinite(value)) *non_finite = 1;
  }
}

}  // namespace

at::Tensor lrp_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const at::Tensor& relevance, double eps, double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const LinearArgs args = check_lrp_linear_args(x, weight, bias, relevance, eps, bias_factor);
  const c10::cuda::CUDAGuard device_guard(args.x.device());
  const int64_t n_targets = args.relevance.size(0);
  const int64_t n_rows = args.x.size(0);
  const int64_t n_in = args.x.size(1);
  const int64_t n_out = args.weight.size(0);
  const int64_t rows = n_targets * n_rows;

  const at::Tensor z = affine_full_precision(args.x, args.weight, args.bias);
  at::Tensor ratio = at::empty_like(args.relevance);
  const bool spread_bias = bias_factor != 0.0 && n_in > 0;
  at::Tensor absorbed = spread_bias ? at::empty({rows}, args.x.options()) : at::Tensor();
  at::Tensor out = at::empty({n_targets, n_rows, n_in}, args.x.options());
  if (out.numel() == 0 && ratio.numel() == 0) return restore_target_dim(out.to(args.result_dtype), args);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor non_finite = at::zeros({1}, args.x.options().dtype(at::kInt));
  int* flag = non_finite.mutable_data_ptr<int>();

  AT_DISPATCH_FLOATING_TYPES(args.x.scalar_type(), "lrp_linear_cuda", [&] {
    const scalar_t* bias_ptr = args.bias.defined() ? args.bias.const_data_ptr<scalar_t>() : nullptr;
    if (spread_bias && rows > 0) {
      const int64_t grid = blocks_for_rows(rows);
      ratio_absorbed_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          args.relevance.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), bias_ptr,
          ratio.mutable_data_ptr<scalar_t>(), absorbed.mutable_data_ptr<scalar_t>(), rows, n_rows, n_out, n_in,
          static_cast<scalar_t>(eps), bias_factor, flag);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else if (ratio.numel() > 0) {
      ratio_kernel<scalar_t><<<blocks_for(ratio.numel()), kThreads, 0, stream>>>(
          args.relevance.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
          ratio.mutable_data_ptr<scalar_t>(), ratio.numel(), n_rows, n_out, static_cast<scalar_t>(eps), flag);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    at::Tensor out_rows = out.view({rows, n_in});
    at::mm_out(out_rows, ratio.view({rows, n_out}), args.weight);
    if (out.numel() > 0) {
      input_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          args.x.const_data_ptr<scalar_t>(), spread_bias ? absorbed.const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), out.numel(), n_rows, n_in, flag);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  out = round_to(out, args.result_dtype, non_finite);
  if (non_finite.item<int>() != 0) raise_non_finite(args);  // the call's one host synchronisation
  return restore_target_dim(out, args);
}

TORCH_LIBRARY_IMPL(capxai, CUDA, m) {
  m.impl("lrp_linear", &lrp_linear_cuda);
}

}  // namespace capxai
