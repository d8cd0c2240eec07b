// Block-sparse attention for one query token, shaped like ggml_flash_attn_ext (mask = NULL,
// max_bias = 0, logit_softcap = 0, one batch row). Dense attention is the same operator with
// every block selected.
//
//   q    F32 [n_q_heads][D], contiguous (ggml q: ne = [D, 1, n_q_heads])
//   K, V F16, element (kv head h, token t, dim d) at (char*)K + h*nb2 + t*nb1 + 2*d
//        (ggml ne = [D, n_ctx, n_kv_heads]; nb1 = 2*D, nb2 = n_ctx_capacity*2*D in the KV cache)
//   keys with index >= n_kv are masked
//   blocks int32 [n_kv_heads][n_sel]: block b covers tokens [b*block_size, (b+1)*block_size).
//        Indices of one row must be distinct (ascending is best: adjacent blocks are read as one
//        span); blocks wholly at or past n_kv, or negative, contribute nothing.
//   out  F32 [n_q_heads][D] (ggml's result layout for one token), out_h = Σ softmax(scale·q_h·k)·v
//        over the selected, unmasked keys of KV head h / (n_q_heads / n_kv_heads); zero when there
//        are none.
//
// Math: F32 throughout (q stays F32, F16 K/V widened exactly), one pass of online softmax per
// tile of 8 or 16 tokens: the group's query heads are processed together, so every K/V row is
// read from memory once per KV head and scored against all of them.
//
// Threads, ggml style: each of nth threads calls sparse_attention_compute(args, ith, nth, ws)
// and then, after a barrier, sparse_attention_reduce(args, ith, nth, ws). The work items are
// (KV head, chunk of its selected blocks); chunks exist only when nth does not divide the KV
// heads evenly (e.g. 3 KV heads on 2 threads: 2 chunks per head, 3 items per thread), and then
// reduce merges a head's chunks with a log-sum-exp combine. When every head is one chunk,
// compute writes `out` directly and reduce returns at once (ws may then be null; the barrier
// can be skipped: check sparse_attention_chunks() == 1).
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/ggml_types.h"

namespace pyresa::cpu {

struct SparseAttentionArgs {
  const float* q = nullptr;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int D = 0;
  const fp16_t* K = nullptr;
  size_t k_nb1 = 0, k_nb2 = 0;  // bytes
  const fp16_t* V = nullptr;
  size_t v_nb1 = 0, v_nb2 = 0;  // bytes
  int64_t n_kv = 0;
  float scale = 1.0f;
  int block_size = 16;
  const int32_t* blocks = nullptr;  // [n_kv_heads][n_sel]
  int64_t n_sel = 0;
  int64_t blocks_stride = -1;  // entries between KV heads' rows of `blocks` (-1: n_sel; 0: one row shared by all heads)
  float* out = nullptr;  // [n_q_heads][D]
};

// Chunks per KV head that nth threads use for this selection (1: no reduce step).
int sparse_attention_chunks(int n_kv_heads, int64_t n_sel, int nth);

// Floats of workspace sparse_attention_compute needs for nth threads (an upper bound over any
// n_sel; 0 when one chunk per head always suffices).
size_t sparse_attention_workspace_floats(int n_q_heads, int n_kv_heads, int D, int nth);

void sparse_attention_compute(const SparseAttentionArgs& a, int ith, int nth, float* ws);
void sparse_attention_reduce(const SparseAttentionArgs& a, int ith, int nth, const float* ws);

// Query heads [q_begin, q_end) only, each over all its KV head's selected blocks, normalized
// into out. The work is never split within a head, so every head's result is the same whatever
// the thread count, and the same for a prefill query as for a decode step over the same keys:
// the engine splits decode steps by query heads, and prefill / rectification run
// causal_attention (causal_attention.h), whose rows go through this kernel's tile code in the
// same order; so dense decoding, sparse decoding at ratio 1 and ReSA's rectification pass
// compute identical numbers (tests/test_causal_attention.py checks it bit for bit).
void sparse_attention_heads(const SparseAttentionArgs& a, int q_begin, int q_end);

// Both steps on the calling thread (nth = 1): tests, and callers without a thread pool.
void sparse_attention(const SparseAttentionArgs& a);

// The per-ISA kernel: unnormalized attention of `group` query heads over a list of blocks.
// Writes m[g] (running max of scaled scores, -inf if no key), l[g] (Σ exp(s - m)) and
// acc[g][D] (Σ exp(s - m)·v). Defined in sparse_attention_{scalar,avx2,avx512}.cpp.
struct SparseAttentionItem {
  const float* q;      // [group][D]
  int group, D;
  const char* K;       // this KV head's base
  size_t k_nb1;
  const char* V;
  size_t v_nb1;
  const int32_t* blocks;
  int64_t n_blocks;
  int block_size;
  int64_t n_kv;
  float scale;
  float* m;
  float* l;
  float* acc;
};
using SparseAttentionKernel = void (*)(const SparseAttentionItem&);
namespace scalar { void sparse_attention_item(const SparseAttentionItem& it); }
namespace avx2 { void sparse_attention_item(const SparseAttentionItem& it); }
namespace avx512 { void sparse_attention_item(const SparseAttentionItem& it); }

}  // namespace pyresa::cpu
