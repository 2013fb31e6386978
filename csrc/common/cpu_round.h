// Store a value computed in float32 (or the input's own dtype) into the output dtype, and say whether the stored value
// is NaN/Inf. Branch-free, so the row loops around it stay vectorised: c10::BFloat16's constructor tests for NaN with
// a branch, and the loop that used it ran 7x slower than a copy of the same bytes (docs/experiments/cpu-bounds).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "finite.h"

namespace capxai {

template <typename scalar_t>
inline int round_store(scalar_t value, scalar_t* out) {
  *out = value;
  return non_finite_flag(value);
}

// Round to nearest even by adding 0x7FFF (+1 when the kept part is odd) to the float's bits. A NaN's bits can wrap in
// the addition, so the flag reads the float itself; a finite float beyond bfloat16's range rounds to Inf, which the
// rounded exponent shows.
inline int round_store(float value, c10::BFloat16* out) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const std::uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  std::uint16_t half_bits = static_cast<std::uint16_t>(rounded);
  std::memcpy(out, &half_bits, sizeof half_bits);
  return non_finite_flag(value) | static_cast<int>((rounded & 0x7F80u) == 0x7F80u);
}

inline int round_store(float value, c10::Half* out) {
  const c10::Half rounded(value);  // float16 overflows past 65504: the check reads the rounded value
  *out = rounded;
  return non_finite_flag(static_cast<float>(rounded));
}

}  // namespace capxai
