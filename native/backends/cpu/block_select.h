// ReSA block selection for one decode step and one layer (DESIGN.md, "Decode step").
//
//   n_blocks = ceil(n_tokens / block_size)            (the partial last block counts)
//   n_sel    = max(ceil(ratio * n_blocks), min(n_blocks, min_blocks), min(n_blocks, local_blocks)),
//              clamped to n_blocks
//   per KV head: pooled query qp = mean of its GQA group's query heads (query head i belongs to
//   KV head i / (n_q_heads / n_kv_heads), ggml's rule); score_b = Σ_j max(qp_j·kmax_bj, qp_j·kmin_bj);
//   the last local_blocks blocks are always kept; the n_sel best blocks are taken, ties going to
//   the lower block index; the output indices are sorted ascending.
//
// ceil(ratio * n_blocks) is evaluated in double exactly as written (as Python's
// math.ceil(ratio * n_blocks) does), so e.g. ratio 0.07 with 100 blocks gives 8, not 7.
// The local-blocks term of n_sel only matters when local_blocks > min_blocks (DESIGN.md asks for
// local_blocks <= min_blocks): "always kept" then wins over the count.
#pragma once
#include <cstdint>

#include "engine/block_descriptors.h"

namespace pyresa::cpu {

struct ResaSelectParams {
  int block_size = 16;
  double ratio = 0.1;
  int min_blocks = 16;
  int local_blocks = 1;
};

// Number of blocks a context of n_tokens has (ceil(n_tokens / block_size)).
int64_t resa_block_count(int64_t n_tokens, int block_size);

// n_sel for a context of n_tokens (0 when n_tokens is 0).
int64_t resa_select_count(int64_t n_tokens, const ResaSelectParams& p);

// Select blocks for every KV head of one layer.
//   q:    [n_q_heads][D] F32, post-RoPE (the step's query, one token)
//   desc: the layer's descriptors; blocks [0, n_blocks) must be current
//   out:  [n_kv_heads][n_sel] block indices, each row ascending
// Returns n_sel. (ith, nth) splits the KV heads over threads as ggml ops do: thread ith
// writes the rows of KV heads ith, ith + nth, ...; every thread returns n_sel.
// Allocation-free after a thread's first call at a given size (thread-local scratch).
int64_t select_blocks(const float* q, int n_q_heads, int n_kv_heads, int D, const BlockDescriptorView& desc,
                      int64_t n_tokens, const ResaSelectParams& p, int32_t* out, int ith = 0, int nth = 1);

}  // namespace pyresa::cpu
