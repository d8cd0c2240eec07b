// Dense causal attention for a chunk of consecutive queries (prefill, and ReSA's rectification
// pass): query i sits at position pos0 + i and attends to keys [0, pos0 + i], all already in the
// KV cache (layout as in sparse_attention.h).
//
//   q    F32 [n_queries][n_q_heads][D] (the engine's q rows), out the same shape
//
// Work items are (KV head, tile of consecutive queries): a K/V tile is widened and scored against
// every row (query x query head of the group) of the item while it is in L1, so the cache is read
// once per query tile instead of once per query. Per row the arithmetic is that of
// sparse_attention_heads over all blocks (same tiles, same order, same operations: see
// causal_attention_item_impl in sparse_attention_kernel.h), so a prefill or rectification query
// computes the same numbers as a dense decode step at its position, whatever the chunking, the
// tiling or the thread count.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/ggml_types.h"

namespace pyresa::cpu {

struct CausalAttentionArgs {
  const float* q = nullptr;
  int n_queries = 0;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int D = 0;
  const fp16_t* K = nullptr;
  size_t k_nb1 = 0, k_nb2 = 0;  // bytes
  const fp16_t* V = nullptr;
  size_t v_nb1 = 0, v_nb2 = 0;  // bytes
  int64_t pos0 = 0;
  float scale = 1.0f;
  float* out = nullptr;
};

// How the queries are cut into tiles for nth threads: n_items = n_kv_heads * n_tiles.
struct CausalAttentionPlan {
  int n_tiles = 1;
  int64_t n_items = 0;
};
CausalAttentionPlan causal_attention_plan(const CausalAttentionArgs& a, int nth);

// One work item; items are independent (any thread, any order) and each writes its own rows of out.
void causal_attention_item(const CausalAttentionArgs& a, const CausalAttentionPlan& plan, int64_t item);

// Every item on the calling thread (tests, callers without a thread pool).
void causal_attention(const CausalAttentionArgs& a, int nth = 1);

// The per-ISA kernel: unnormalized attention of n_queries * group rows over one KV head.
// Writes m[r], l[r], acc[r][D] as SparseAttentionItem does. Defined beside sparse_attention_item
// in sparse_attention_{scalar,avx2,avx512}.cpp (the same tile code).
struct CausalAttentionItem {
  const float* q;  // [n_queries * group][D], row r = query r / group, head r % group
  int n_queries, group, D;
  const char* K;   // this KV head's base
  size_t k_nb1;
  const char* V;
  size_t v_nb1;
  int64_t pos0;
  float scale;
  float* m;
  float* l;
  float* acc;
};
using CausalAttentionKernel = void (*)(const CausalAttentionItem&);
namespace scalar { void causal_attention_item(const CausalAttentionItem& it); }
namespace avx2 { void causal_attention_item(const CausalAttentionItem& it); }
namespace avx512 { void causal_attention_item(const CausalAttentionItem& it); }

}  // namespace pyresa::cpu
