// The key tiles one CTA of the many-rows causal attention (attention_batched.cu, attention_wgmma.cu)
// visits: its rows are (query token, query head) pairs of one GQA group, row r being token r / G,
// and the keys a row may see end at its token's position. The CTA's tiles are split evenly over
// the n_splits CTAs that share its rows.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyresa::cuda {

struct CausalSplit {
  int max_pos;  // the last key any row of this CTA sees
  int min_lim;  // keys <= this are seen by every row (no mask needed)
  int t_begin, t_end;  // this split's tiles of tile_keys keys
};

// Rows [row0, row0 + rows) of the R rows of a group with G query heads per KV head, the first
// token at position pos0.
__device__ __forceinline__ CausalSplit causal_split(int R, int row0, int rows, int G, int pos0, int tile_keys,
                                                    int split, int n_splits) {
  CausalSplit c;
  const int last_row = min(R - 1, row0 + rows - 1);
  c.max_pos = pos0 + last_row / G;
  c.min_lim = pos0 + row0 / G;
  const int n_tiles = c.max_pos / tile_keys + 1;
  c.t_begin = (int)((int64_t)n_tiles * split / n_splits);
  c.t_end = (int)((int64_t)n_tiles * (split + 1) / n_splits);
  return c;
}

}  // namespace pyresa::cuda
