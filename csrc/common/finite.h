// NaN/Inf detection inside CPU loops without a branch and without stopping vectorisation: v - v is 0 exactly when
// v is finite. OR-ing integer flags is associative (summing floats is not, and would keep the loop scalar).
#pragma once

namespace capxai {

template <typename scalar_t>
inline int non_finite_flag(scalar_t value) {
  return !((value - value) == scalar_t(0));
}

}  // namespace capxai
