// CUDA passes of lrp_lstm (docs/LRP_RULES.md, "LSTM cell"); the driver (GEMMs by cuBLAS, the reverse-time loop, the
// skipping of inactive targets) is lrp_lstm_impl.h, shared with the CPU kernels. Any size: grid-stride loops,
// 64-bit indices; rows needing a sum over H use one block per row.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../common/cuda_launch.cuh"
#include "../../common/stabilize.h"
#include "../lrp_lstm_impl.h"

namespace capxai {
namespace {

template <typename scalar_t>
__device__ inline scalar_t sigmoid(scalar_t z) {
  return scalar_t(1) / (scalar_t(1) + ::exp(-z));
}

template <typename scalar_t>
__global__ void forward_step_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ b_g,
                                    scalar_t* __restrict__ c, scalar_t* __restrict__ h, scalar_t* __restrict__ keep,
                                    scalar_t* __restrict__ to_gate, scalar_t* __restrict__ absorb, int64_t batch,
                                    int64_t hidden, scalar_t eps, scalar_t half_share, int* __restrict__ non_finite) {
  const int64_t total = batch * hidden;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / hidden, j = e - b * hidden;
    const scalar_t* z_row = z + b * 4 * hidden;
    const scalar_t i = sigmoid(z_row[j]);
    const scalar_t f = sigmoid(z_row[hidden + j]);
    const scalar_t z_g = z_row[2 * hidden + j];
    const scalar_t g = ::tanh(z_g);
    const scalar_t o = sigmoid(z_row[3 * hidden + j]);
    const scalar_t kept = f * c[e];
    const scalar_t written = i * g;
    const scalar_t c_new = kept + written;
    const scalar_t share = half_share * sign_nonneg_as_plus(c_new);
    const scalar_t stab_c = stabilize(c_new, eps);
    keep[e] = (kept + share) / stab_c;
    to_gate[e] = (written + share) / stab_c / stabilize(z_g, eps);
    if (absorb != nullptr) absorb[e] = b_g[j] + eps * sign_nonneg_as_plus(z_g);
    c[e] = c_new;
    h[e] = o * ::tanh(c_new);
    // A NaN/Inf pre-activation of any gate, or cell, is refused (sigmoid(inf) = 1 would hide it; lstm_forward).
    if (!isfinite(z_row[j]) || !isfinite(z_row[hidden + j]) || !isfinite(z_g) || !isfinite(z_row[3 * hidden + j]) ||
        !isfinite(c_new))
      *non_finite = 1;
  }
}

// One block per (k, t): does it carry any non-zero relevance? Also raises `non_finite` on NaN/Inf.
template <typename scalar_t>
__global__ void active_pairs_kernel(const scalar_t* __restrict__ rel_h, const scalar_t* __restrict__ rel_c,
                                    int* __restrict__ active, int* __restrict__ non_finite, int64_t pairs,
                                    int64_t step_size) {
  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    int nonzero = 0;
    for (int64_t e = threadIdx.x; e < step_size; e += blockDim.x) {
      const scalar_t h = rel_h[pair * step_size + e];
      const scalar_t c = rel_c != nullptr ? rel_c[pair * step_size + e] : scalar_t(0);
      nonzero |= (h != scalar_t(0)) | (c != scalar_t(0));
      if (!isfinite(h) || !isfinite(c)) *non_finite = 1;
    }
    if (__syncthreads_or(nonzero) && threadIdx.x == 0) active[pair] = 1;
  }
}

// One block per active (slot, b) row; see CpuPasses::backward_step for the arithmetic.
template <typename scalar_t>
__global__ void backward_step_kernel(const scalar_t* __restrict__ rel_h, const scalar_t* __restrict__ rel_c,
                                     const int64_t* __restrict__ target_of, int64_t t, int64_t rows, int64_t steps,
                                     int64_t batch, int64_t hidden, const scalar_t* __restrict__ h_t,
                                     const scalar_t* __restrict__ h_sum, int64_t sum_stride,
                                     scalar_t* __restrict__ shares, scalar_t* __restrict__ carry,
                                     const scalar_t* __restrict__ keep, const scalar_t* __restrict__ to_gate,
                                     const scalar_t* __restrict__ absorb, scalar_t* __restrict__ ratio,
                                     double share_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t slot = row / batch, b = row - slot * batch;
    const int64_t injected = ((target_of[slot] * steps + t) * batch + b) * hidden;
    const int64_t state = b * hidden, carried = row * hidden;
    const scalar_t carried_share = shares != nullptr ? shares[row] : scalar_t(0);
    acc_t absorbed_sum = 0;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      const scalar_t r_h = rel_h[injected + j] + h_t[state + j] * h_sum[row * sum_stride + j] + carried_share;
      const scalar_t r_c = (rel_c != nullptr ? rel_c[injected + j] : scalar_t(0)) + carry[carried + j] + r_h;
      carry[carried + j] = keep[state + j] * r_c;
      const scalar_t s = to_gate[state + j] * r_c;
      ratio[carried + j] = s;
      if (absorb != nullptr) absorbed_sum += acc_t(s) * acc_t(absorb[state + j]);
    }
    if (shares != nullptr) {
      partial[threadIdx.x] = absorbed_sum;
      __syncthreads();  // also orders every thread's read of shares[row] before thread 0 rewrites it
      for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
      }
      if (threadIdx.x == 0) shares[row] = scalar_t(partial[0] * acc_t(share_scale));
    }
    __syncthreads();
  }
}

// relevance_x[target_of[slot], t, b, d] = x[t, b, d] * input_sum[slot * B + b, d] + share, or 0 for inactive slots.
template <typename scalar_t>
__global__ void input_step_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sum,
                                  int64_t sum_stride, const scalar_t* __restrict__ shares,
                                  const int64_t* __restrict__ target_of, scalar_t* __restrict__ out, int64_t t,
                                  int64_t active, int64_t total, int64_t steps, int64_t batch, int64_t n_in,
                                  int* __restrict__ non_finite) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / n_in, d = e - row * n_in;
    const int64_t slot = row / batch, b = row - slot * batch;
    scalar_t* out_value = out + ((target_of[slot] * steps + t) * batch + b) * n_in + d;
    if (slot >= active) {
      *out_value = scalar_t(0);
      continue;
    }
    const scalar_t value = x[(t * batch + b) * n_in + d] * sum[row * sum_stride + d] +
                           (shares != nullptr ? shares[row] : scalar_t(0));
    *out_value = value;
    if (!isfinite(value)) *non_finite = 1;
  }
}

struct CudaPasses {
  static void forward_step(const at::Tensor& gates, const at::Tensor& bias_g, at::Tensor& cell, at::Tensor hidden_out,
                           at::Tensor keep_cell, at::Tensor to_gate_ratio, at::Tensor absorbed_weight, double eps,
                           double bias_factor, const at::Tensor& non_finite) {
    const int64_t batch = cell.size(0), hidden = cell.size(1);
    AT_DISPATCH_FLOATING_TYPES(cell.scalar_type(), "lrp_lstm_forward_cuda", [&] {
      forward_step_kernel<scalar_t><<<blocks_for(batch * hidden), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          gates.const_data_ptr<scalar_t>(), bias_g.const_data_ptr<scalar_t>(), cell.mutable_data_ptr<scalar_t>(),
          hidden_out.mutable_data_ptr<scalar_t>(), keep_cell.mutable_data_ptr<scalar_t>(),
          to_gate_ratio.mutable_data_ptr<scalar_t>(),
          absorbed_weight.defined() ? absorbed_weight.mutable_data_ptr<scalar_t>() : nullptr, batch, hidden,
          static_cast<scalar_t>(eps), static_cast<scalar_t>(bias_factor * eps / 2.0),
          non_finite.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static std::vector<int64_t> last_active_steps(const at::Tensor& relevance_h, const at::Tensor& relevance_c,
                                                bool& finite) {
    const int64_t targets = relevance_h.size(0), steps = relevance_h.size(1);
    const int64_t step_size = relevance_h.size(2) * relevance_h.size(3);
    const auto int_options = relevance_h.options().dtype(at::kInt);
    // The active flags and, last, the non-finite flag: one device-to-host copy (one synchronisation) reads both.
    at::Tensor flags = at::zeros({targets * steps + 1}, int_options);
    at::Tensor active = flags.narrow(0, 0, targets * steps);
    at::Tensor non_finite = flags.narrow(0, targets * steps, 1);
    if (targets * steps > 0 && step_size > 0) {
      AT_DISPATCH_FLOATING_TYPES(relevance_h.scalar_type(), "lrp_lstm_active_cuda", [&] {
        const int64_t grid = blocks_for_rows(targets * steps);
        active_pairs_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            relevance_h.const_data_ptr<scalar_t>(),
            relevance_c.defined() ? relevance_c.const_data_ptr<scalar_t>() : nullptr, active.mutable_data_ptr<int>(),
            non_finite.mutable_data_ptr<int>(), targets * steps, step_size);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    const at::Tensor host = flags.cpu();
    const int* host_flags = host.const_data_ptr<int>();
    finite = host_flags[targets * steps] == 0;
    std::vector<int64_t> last(targets, -1);
    for (int64_t k = 0; k < targets; ++k)
      for (int64_t t = 0; t < steps; ++t)
        if (host_flags[k * steps + t]) last[k] = t;
    return last;
  }

  static void backward_step(const at::Tensor& relevance_h, const at::Tensor& relevance_c,
                            const at::Tensor& slot_target, int64_t t, int64_t active, const at::Tensor& hidden_t,
                            const at::Tensor& hidden_sum, at::Tensor& absorbed, at::Tensor& carry_cell,
                            const at::Tensor& keep_cell, const at::Tensor& to_gate_ratio,
                            const at::Tensor& absorbed_weight, at::Tensor& gate_ratio, double share_scale) {
    const int64_t steps = relevance_h.size(1), batch = relevance_h.size(2), hidden = relevance_h.size(3);
    const int64_t rows = active * batch;
    if (rows == 0) return;
    AT_DISPATCH_FLOATING_TYPES(relevance_h.scalar_type(), "lrp_lstm_backward_step_cuda", [&] {
      const int64_t grid = blocks_for_rows(rows);
      backward_step_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          relevance_h.const_data_ptr<scalar_t>(),
          relevance_c.defined() ? relevance_c.const_data_ptr<scalar_t>() : nullptr,
          slot_target.const_data_ptr<int64_t>(), t, rows, steps, batch, hidden, hidden_t.const_data_ptr<scalar_t>(),
          hidden_sum.const_data_ptr<scalar_t>(), hidden_sum.stride(0),
          absorbed.defined() ? absorbed.mutable_data_ptr<scalar_t>() : nullptr,
          carry_cell.mutable_data_ptr<scalar_t>(), keep_cell.const_data_ptr<scalar_t>(),
          to_gate_ratio.const_data_ptr<scalar_t>(),
          absorbed_weight.defined() ? absorbed_weight.const_data_ptr<scalar_t>() : nullptr,
          gate_ratio.mutable_data_ptr<scalar_t>(), share_scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // non_finite stays on the device; the driver reads it once per call, not once per step.
  static void input_step(const at::Tensor& x, int64_t t, int64_t active, const at::Tensor& input_sum,
                         const at::Tensor& absorbed, const at::Tensor& slot_target, at::Tensor& relevance_x,
                         at::Tensor& non_finite) {
    const int64_t targets = relevance_x.size(0), steps = x.size(0), batch = x.size(1), n_in = x.size(2);
    const int64_t total = targets * batch * n_in;
    if (total == 0) return;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrp_lstm_input_step_cuda", [&] {
      input_step_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), input_sum.const_data_ptr<scalar_t>(), input_sum.stride(0),
          absorbed.defined() ? absorbed.const_data_ptr<scalar_t>() : nullptr, slot_target.const_data_ptr<int64_t>(),
          relevance_x.mutable_data_ptr<scalar_t>(), t, active, total, steps, batch, n_in,
          non_finite.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

LstmRelevance lrp_lstm_cuda(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                            const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                            const at::Tensor& relevance_h, const std::optional<at::Tensor>& relevance_c, double eps,
                            double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const LstmArgs args = check_lrp_lstm_args(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h,
                                            relevance_c, eps, bias_factor, "lrp_lstm");
  const c10::cuda::CUDAGuard device_guard(args.x.device());
  return lrp_lstm_impl<CudaPasses>(args, eps, bias_factor, "lrp_lstm");
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CUDA, m) {
  m.impl("lrp_lstm", &lrp_lstm_cuda);
}

}  // namespace capxai
