// How many blocks a decode step's selection takes (the CPU's resa_select_count), on the device:
// shared by the scoring and both top-n kernels, which read the position themselves.
#pragma once
#include "backends/cuda/resa.cuh"

namespace pyresa::cuda {

__device__ __forceinline__ void select_counts(int n_tokens, const ResaParams& p, int& n_blocks, int& n_local,
                                              int& n_sel) {
  n_blocks = n_tokens <= 0 ? 0 : (n_tokens + p.block_size - 1) / p.block_size;
  const double by_ratio = ceil(p.ratio * (double)n_blocks);
  n_sel = by_ratio >= (double)n_blocks ? n_blocks : (int)by_ratio;
  n_sel = max(n_sel, min(n_blocks, p.min_blocks));
  n_sel = max(n_sel, min(n_blocks, p.local_blocks));
  n_local = min(p.local_blocks, n_blocks);
}

}  // namespace pyresa::cuda
