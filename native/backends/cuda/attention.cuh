// Attention over the F16 KV cache on tensor cores, flash style (online softmax, no score matrix
// in memory). Rows are the (query token, query head) pairs of one GQA group, so each K/V tile is
// read once per KV head for all of them: a decode step has `group` rows, a prefill chunk or a
// rectification n_tokens * group. The keys are visited in tiles of 32 tokens made of two
// 16-token spans: consecutive spans (dense) or spans of the selected blocks (block-sparse).
// The span list is split over `n_splits` CTAs per KV head (flash-decoding); the partial results
// are merged by a log-sum-exp combine.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pyresa::cuda {

struct AttentionArgs {
  const float* q = nullptr;  // [n_tok][q_stride] F32 post-RoPE; query head hq at hq * D
  int64_t q_stride = 0;
  float* out = nullptr;      // [n_tok][out_stride]
  int64_t out_stride = 0;
  const __half* K = nullptr;  // this layer's cache: KV head h, token t at (h * head_stride + t * D)
  const __half* V = nullptr;
  int64_t head_stride = 0;
  int n_tok = 0, n_head = 0, n_kv_head = 0, D = 0;
  // Positions: query token i is at pos0 + i, pos0 = *pos_dev + pos_offset; it sees keys <= its position.
  const int* pos_dev = nullptr;
  int pos_offset = 0;
  // Block-sparse: blocks[h * blocks_stride + j], j < *n_sel_dev, ascending; nullptr = dense.
  const int32_t* blocks = nullptr;
  int64_t blocks_stride = 0;
  const int* n_sel_dev = nullptr;
  int block_size = 16;  // multiple of 16
  float scale = 1.0f;
  // Two-term F16 probabilities (and, block-sparse, query): near-F32 accuracy for decode and
  // rectification at twice the tensor-core work; prefill (compute-bound) turns it off.
  bool precise = true;
  bool split_query = true;  // two-term F16 query too (else the query is rounded to F16)
  int n_splits = 1;
  // Workspace for n_splits > 1: n_kv_head * n_splits * rows * (D + 2) floats.
  float* work = nullptr;
  // Decode kernel only: 2 counters per KV head (zero at first use; every launch leaves them
  // consistent) for the combine inside the attention kernel (attention_decode.cu,
  // decode_combine_mode); nullptr = the separate combine kernel.
  unsigned* sync = nullptr;
  // Set by attention(), not by callers: CTAs per KV head that merge the splits in the decode
  // kernel (0 = the separate combine kernel runs after it).
  int combine_mergers = 0;
};

// Counters a.sync needs for n_kv_head KV heads (unsigned ints, zeroed once by the owner).
constexpr int attention_sync_words(int n_kv_head) { return 2 * n_kv_head; }

// Split count for a decode step on the decode kernel (attention_decode.cu): one wave of CTAs;
// 0 where that kernel does not apply (the caller's own choice then).
int decode_attention_splits(int n_tok, int n_head, int n_kv_head, int D, int n_tiles, int n_sm);
size_t attention_work_floats(int n_tok, int n_head, int n_kv_head, int D, int n_splits);
void attention(const AttentionArgs& a, cudaStream_t stream);
// Merges the n_splits partial results in a.work into a.out (log-sum-exp).
void attention_combine(const AttentionArgs& a, cudaStream_t stream);

// Dense causal attention for many query rows (rectification, prefill chunks): attention_batched.cu.
// variant 1: 256 rows per CTA (8 warps x 32 rows); 2: 240 rows (15 warps x 16 rows); 3: 128 rows
// (4 warps x 32 rows, two CTAs per SM); 4: wgmma (sm_90a, attention_wgmma.cu), 128 rows, one CTA
// per SM (variant 3 where attention_wgmma_available() is false).
// Same arguments and results as attention(); a.blocks must be null.
void attention_batched(const AttentionArgs& a, int variant, cudaStream_t stream);
// Shared memory a variant's CTA needs (the engine falls back to attention() where the device
// cannot give it: variant 3 needs 104 KB at D = 128, 1 and 2 over 200 KB).
size_t attention_batched_smem_bytes(int variant, int D);
// The wgmma kernel (attention_wgmma.cu, attention_batched variant 4): whether this build has its
// sm_90a code and the current device runs it (compute capability 9.0; probed once per device,
// outside graph capture), its shared memory, and the kernel itself (throws where unavailable).
bool attention_wgmma_available();
size_t attention_wgmma_smem_bytes(int D);
void attention_wgmma(const AttentionArgs& a, cudaStream_t stream);
// Waves of CTAs the wgmma kernel's split count aims at (default 2; PYRESA_CUDA_RECT_WAVES).
int& attention_wgmma_waves();
// Splits over the sequence for attention_batched: one CTA per SM, at least 8 tiles of 32 keys each.
int attention_batched_splits(int n_tok, int n_head, int n_kv_head, int n_keys, int n_sm, int variant);

}  // namespace pyresa::cuda
