// The out-of-line part of precision.h.
#include "precision.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>

#include "cpu_round.h"

namespace capxai {

bool round_to_finite(at::Tensor& result, at::ScalarType dtype) {
  if (result.scalar_type() == dtype) return true;
  TORCH_INTERNAL_ASSERT(result.scalar_type() == at::kFloat && is_half_precision(dtype));
  const at::Tensor source = result.contiguous();
  at::Tensor rounded = at::empty(source.sizes(), source.options().dtype(dtype));
  std::atomic<bool> finite{true};
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dtype, "capxai_round_to_finite", [&] {
    const float* in = source.const_data_ptr<float>();
    scalar_t* out = rounded.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, source.numel(), 32768, [&](int64_t begin, int64_t end) {
      int non_finite = 0;
      for (int64_t i = begin; i < end; ++i) {
        non_finite |= round_store(in[i], out + i);
      }
      if (non_finite) finite.store(false, std::memory_order_relaxed);
    });
  });
  result = rounded;
  return finite.load();
}

}  // namespace capxai
