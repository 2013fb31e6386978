// Launch shapes shared by the CUDA kernels: 256 threads a block; grid-stride loops cover any size, so the grid is
// capped (2^20 blocks; 65,535 along y) rather than grown with the problem.
#pragma once

#include <cuda_runtime.h>

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

// Launch shape of the row kernels (rows of `width` contiguous elements; one row per (blockIdx.y, threadIdx.y)):
// threads along the row, a whole number of warps up to the block, and the rest of the block's kThreads over rows.
// A block of 256 threads along a row of 64 (SDPA's dv) left three quarters of its threads idle.
struct RowLaunch {
  dim3 grid, block;
};

inline RowLaunch row_launch(int64_t rows, int64_t width) {
  const int64_t along = std::min<int64_t>(kThreads, std::max<int64_t>(32, (width + 31) / 32 * 32));
  const int64_t over_rows = kThreads / along;
  RowLaunch launch;
  launch.block = dim3(static_cast<unsigned>(along), static_cast<unsigned>(over_rows));
  launch.grid = dim3(static_cast<unsigned>(std::min<int64_t>((width + along - 1) / along, 1024)),
                     static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((rows + over_rows - 1) / over_rows,
                                                                                  65535))));
  return launch;
}

}  // namespace capxai
