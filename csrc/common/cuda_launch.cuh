// Launch shapes shared by the CUDA kernels: 256 threads a block; grid-stride loops cover any size, so the grid is
// capped (2^20 blocks) rather than grown with the problem.
#pragma once

#include <algorithm>
#include <cstdint>

namespace capxai {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Blocks for a grid-stride loop over n elements (at least 1).
inline int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// Blocks for one-block-per-row kernels over `rows` rows (at least 1).
inline int64_t blocks_for_rows(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(rows, kMaxBlocks));
}

}  // namespace capxai
