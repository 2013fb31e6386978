// Precision policy shared by every op and backend (docs/LRP_RULES.md (Part 2), "Precision").
// - float16 / bfloat16 inputs are computed in float32 -- forward values, stabilised denominators, every sum and every
//   GEMM -- and rounded to the input dtype once, at the end: LRP divides by forward values near zero, where the
//   8 (bfloat16) or 11 (float16) bits of a half-precision intermediate would decide the sign of the stabiliser.
// - GEMMs inside the ops run in full float32 even when the user enabled TF32 (torch.backends.cuda.matmul.allow_tf32,
//   set_float32_matmul_precision("high")): TF32 keeps 10 mantissa bits, so a forward value z near 0 recomputed with
//   TF32 can change sign or size by more than eps and R / stab(z) by orders of magnitude. The same holds on the CPU,
//   where set_float32_matmul_precision("medium") makes oneDNN compute float32 GEMMs in bfloat16 (seen on this
//   project's AVX512-BF16 machine: lrp_linear's result changed before this guard).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <atomic>
#include <mutex>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "finite.h"

namespace capxai {

// Full float32 GEMMs for the lifetime of an op call. cuBLAS: at::NoTF32Guard, thread-local (other threads keep the
// user's setting). oneDNN has no thread-local override, so its process-wide matmul precision is set to IEEE while
// any capxai op runs and restored when the last one returns (a count under a mutex: concurrent and nested calls
// restore the user's value exactly once).
class FullPrecisionGemms {
 public:
  FullPrecisionGemms() {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (depth_++ > 0) return;
    saved_ = at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
    if (saved_ != at::Float32Precision::IEEE)
      at::globalContext().setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL,
                                              at::Float32Precision::IEEE);
  }
  ~FullPrecisionGemms() {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (--depth_ > 0 || saved_ == at::Float32Precision::IEEE) return;
    at::globalContext().setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, saved_);
  }
  FullPrecisionGemms(const FullPrecisionGemms&) = delete;
  FullPrecisionGemms& operator=(const FullPrecisionGemms&) = delete;

 private:
  at::NoTF32Guard no_tf32_;
  inline static std::mutex mutex_;
  inline static int depth_ = 0;
  inline static at::Float32Precision saved_ = at::Float32Precision::IEEE;
};

// x @ weight.t() + bias for 2-D x [N, In], weight [Out, In], bias [Out] (or undefined), under FullPrecisionGemms.
// Not at::linear / at::addmm with a 1-D bias: on CUDA those take cuBLASLt's bias epilogue, which reads the global
// TF32 setting and not at::NoTF32Guard. A plain GEMM, then the bias in its own pass (a pass over [N, Out], small
// next to the GEMM). Not addmm_out into an output that holds the bias either: on the CPU (torch 2.11 and 2.14) that
// aliasing gives wrong sums when N = 1.
inline at::Tensor affine_full_precision(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor out = at::mm(x, weight.t());
  if (bias.defined()) out.add_(bias);
  return out;
}

inline bool is_half_precision(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16;
}

// The dtype the kernels compute in: float32 for half-precision inputs, else the input's own.
inline at::ScalarType compute_dtype(at::ScalarType dtype) {
  return is_half_precision(dtype) ? at::kFloat : dtype;
}

// A contiguous copy (or the tensor itself) in the compute dtype; bool masks stay bool.
inline at::Tensor to_compute(const at::Tensor& t) {
  if (!t.defined()) return t;
  return t.scalar_type() == at::kBool ? t.contiguous() : t.to(compute_dtype(t.scalar_type())).contiguous();
}

// CPU kernels keep their flags on the host: round (one parallel pass, the check on the way; a separate
// isfinite().all() pass cost four times the rounding) and say whether the result stayed finite. Out of line
// (precision.cpp): inlined into every kernel's file, its body grew GCC's inlining budget for the unit and cost
// lrp_sdpa's value pass its register-blocked inner loop (30 % slower, docs/experiments/cpu-bounds).
bool round_to_finite(at::Tensor& result, at::ScalarType dtype);

// The result rounded to the caller's dtype. Rounding float32 to float16 overflows beyond 65504 (bfloat16 only at
// float32's own edge): then `non_finite` (an int tensor on the result's device) is raised, without a host sync.
inline at::Tensor round_to(const at::Tensor& result, at::ScalarType dtype, const at::Tensor& non_finite) {
  if (result.scalar_type() == dtype) return result;
  if (result.is_cpu()) {  // one pass with the check on the way (see round_to_finite)
    at::Tensor rounded = result;
    if (!round_to_finite(rounded, dtype)) non_finite.fill_(1);
    return rounded;
  }
  at::Tensor rounded = result.to(dtype);
  if (rounded.numel() > 0) non_finite.bitwise_or_(at::isfinite(rounded).logical_not().any());
  return rounded;
}

}  // namespace capxai
