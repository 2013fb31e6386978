// CUDA kernels of lrp_sdpa and lrp_sdpa_attnlrp (docs/LRP_RULES.md, "Scaled dot-product attention"): the forward and the
// small factors by ATen/cuBLAS (lrp_sdpa.cpp); relevance_v either by the GEMM formulation (cuBLAS batched GEMMs,
// then gemm_epilogue_kernel; the default on CUDA) or by the fused value_kernel, one thread per output element,
// threads of a warp along dv (coalesced reads of ratio and v, one broadcast read of A), which loops over every
// query per output element (no reuse; 94 % of the op on an H100 before the GEMM formulation).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../common/cuda_launch.cuh"
#include "../lrp_sdpa.h"

namespace capxai {
namespace {

template <typename scalar_t>
__global__ void value_kernel(const scalar_t* __restrict__ v, const scalar_t* __restrict__ attention,
                             const scalar_t* __restrict__ allowed, const scalar_t* __restrict__ r,
                             const scalar_t* __restrict__ s, scalar_t* __restrict__ o, int64_t total,
                             int64_t batch_heads, int64_t n_queries, int64_t n_keys, int64_t dim_v, scalar_t scale,
                             int* __restrict__ non_finite) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % dim_v, row = e / dim_v;  // row = (k, b, h, j)
    const int64_t kbh = row / n_keys, j = row % n_keys, bh = kbh % batch_heads;
    const scalar_t* a_bh = attention + bh * n_queries * n_keys;
    const scalar_t* r_kbh = r + kbh * n_queries * dim_v;
    acc_t sum = 0, shared = 0;
    for (int64_t i = 0; i < n_queries; ++i) sum += acc_t(a_bh[i * n_keys + j]) * acc_t(r_kbh[i * dim_v + c]);
    if (s != nullptr) {
      const scalar_t* s_kbh = s + kbh * n_queries * dim_v;
      for (int64_t i = 0; i < n_queries; ++i) {
        const acc_t weight = allowed != nullptr ? acc_t(allowed[(bh * n_queries + i) * n_keys + j]) : acc_t(1);
        shared += weight * acc_t(s_kbh[i * dim_v + c]);
      }
    }
    const scalar_t value = scalar_t(acc_t(scale) * (acc_t(v[(bh * n_keys + j) * dim_v + c]) * sum + shared));
    o[e] = value;
    if (!isfinite(value)) *non_finite = 1;
  }
}

// The GEMM formulation's epilogue: rows (k, bh, j) along y (indices once per row), dv along x (row_launch).
//   out[k, bh, j, e] = scale * (v[bh, j, e] * products[bh, j, k, e] + shares[bh, j or 0, k, e])
template <typename scalar_t>
__global__ void gemm_epilogue_kernel(const scalar_t* __restrict__ v, const scalar_t* __restrict__ products,
                                     const scalar_t* __restrict__ shares, scalar_t* __restrict__ out, int64_t rows,
                                     int64_t targets, int64_t batch_heads, int64_t n_keys, int64_t dim_v,
                                     int64_t share_rows, scalar_t scale, int* __restrict__ non_finite) {
  for (int64_t row = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; row < rows;
       row += int64_t(gridDim.y) * blockDim.y) {
    const EpilogueRow at = epilogue_row(row, targets, batch_heads, n_keys, dim_v, share_rows);
    const scalar_t* v_row = v + at.value;
    const scalar_t* p_row = products + at.product;
    const scalar_t* s_row = shares != nullptr ? shares + at.share : nullptr;
    scalar_t* o_row = out + at.out;
    int bad = 0;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < dim_v;
         e += int64_t(gridDim.x) * blockDim.x) {
      const scalar_t value = scale * (v_row[e] * p_row[e] + (s_row != nullptr ? s_row[e] : scalar_t(0)));
      o_row[e] = value;
      bad |= !isfinite(value);
    }
    if (bad) *non_finite = 1;
  }
}

struct CudaSdpa {
  static void fused_value_pass(const SdpaArgs& args, const SdpaForward& fwd, const at::Tensor& ratio,
                               const at::Tensor& share, double factor, at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lrp_sdpa_value_cuda", [&] {
      const int64_t blocks = blocks_for(out.numel());
      value_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          args.v.const_data_ptr<scalar_t>(), fwd.weights.const_data_ptr<scalar_t>(),
          fwd.allowed.defined() ? fwd.allowed.const_data_ptr<scalar_t>() : nullptr,
          ratio.const_data_ptr<scalar_t>(), share.defined() ? share.const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), out.numel(), out.size(1) * out.size(2), fwd.weights.size(2),
          out.size(3), out.size(4), static_cast<scalar_t>(factor), args.flags.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void gemm_epilogue(const SdpaArgs& args, const at::Tensor& products, const at::Tensor& shares,
                            double factor, at::Tensor& out) {
    const int64_t targets = out.size(0), batch_heads = out.size(1) * out.size(2);
    const int64_t n_keys = out.size(3), dim_v = out.size(4), rows = targets * batch_heads * n_keys;
    const RowLaunch launch = row_launch(rows, dim_v);
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lrp_sdpa_gemm_epilogue_cuda", [&] {
      gemm_epilogue_kernel<scalar_t><<<launch.grid, launch.block, 0, at::cuda::getCurrentCUDAStream()>>>(
          args.v.const_data_ptr<scalar_t>(), products.const_data_ptr<scalar_t>(),
          shares.defined() ? shares.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), rows,
          targets, batch_heads, n_keys, dim_v, shares.defined() ? shares.size(1) : 0,
          static_cast<scalar_t>(factor), args.flags.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

at::Tensor lrp_sdpa_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& relevance,
                         const std::optional<at::Tensor>& attn_mask, double eps, double bias_factor,
                         std::optional<double> scale) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  // The checks first: they name a tensor on another device, where a guard built from a CPU q would raise an internal
  // error instead (the dispatcher picks this kernel when any argument is on CUDA).
  const SdpaArgs args = check_lrp_sdpa_args(q, k, v, relevance, attn_mask, eps, bias_factor, scale, "lrp_sdpa");
  const c10::cuda::CUDAGuard device_guard(args.q.device());
  return lrp_sdpa_constant<CudaSdpa>(args, eps, bias_factor);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lrp_sdpa_attnlrp_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& relevance,
    const std::optional<at::Tensor>& attn_mask, double eps, double bias_factor, std::optional<double> scale) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const SdpaArgs args =
      check_lrp_sdpa_args(q, k, v, relevance, attn_mask, eps, bias_factor, scale, "lrp_sdpa_attnlrp");
  const c10::cuda::CUDAGuard device_guard(args.q.device());  // after the checks, as above
  return lrp_sdpa_attnlrp<CudaSdpa>(args, eps, bias_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CUDA, m) {
  m.impl("lrp_sdpa", &lrp_sdpa_cuda);
  m.impl("lrp_sdpa_attnlrp", &lrp_sdpa_attnlrp_cuda);
}

}  // namespace capxai
