// Large CPU outputs on transparent huge pages. An op that returns a fresh tensor of hundreds of MB pays one page fault
// per 4 KiB on its first write (the kernel maps and zeroes every page): measured on this project's 2-core EPYC, a
// 258 MB output cost 95 ms of faults against a 23 ms copy of the same bytes, three quarters of
// lrp_additive_attention's time. Advising the buffer's 2 MiB-aligned interior as MADV_HUGEPAGE makes the faults 512x
// fewer (PyTorch's own THP_MEM_ALLOC_ENABLE does this for every allocation, process-wide; here it is per output).
// It is advice: where the kernel refuses it (THP "never", non-Linux) the tensor is the same, only slower to fill.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace capxai {

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHugePage = std::uintptr_t(2) << 20;
  const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(out.data_ptr());
  const std::uintptr_t bytes = out.nbytes();
  if (out.is_cpu() && bytes >= 4 * kHugePage) {  // below a few huge pages the advice saves too little to matter
    const std::uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
    const std::uintptr_t end = (start + bytes) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: result ignored
  }
#endif
  return out;
}

}  // namespace capxai
