// The stabiliser of docs/LRP_RULES.md ("Notation"): stab(z) = z + eps * sign(z), with sign(0) = +1.
// Shared by every CPU and CUDA kernel so that all of them divide by exactly the same number.
#pragma once

#include <c10/macros/Macros.h>

namespace capxai {

template <typename T>
C10_HOST_DEVICE inline T sign_nonneg_as_plus(T z) {
  return z >= T(0) ? T(1) : T(-1);
}

template <typename T>
C10_HOST_DEVICE inline T stabilize(T z, T eps) {
  return z + eps * sign_nonneg_as_plus(z);
}

}  // namespace capxai
