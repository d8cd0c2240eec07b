// Dense causal attention over the F16 KV cache, written the flash way: keys are visited in
// blocks with a running max and sum (online softmax), so no n×n score matrix exists and a
// long context costs one pass over K and V. All query heads of a GQA group are handled
// together, so each K/V block is read once per group.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backends/cpu/thread_pool.h"
#include "formats/ggml_types.h"

namespace pyresa::cpu {

// One layer's cache as attention sees it: head h's token t starts at k + h*head_stride + t*head_dim.
struct KvLayerView {
  const fp16_t* k;
  const fp16_t* v;
  size_t head_stride;  // elements between KV heads (= capacity * head_dim)
  int n_kv_heads;
  int head_dim;
};

// Running softmax state of one query head over a range of keys.
struct SoftmaxState {
  float max;  // running maximum score
  float sum;  // Σ exp(score - max)
  // followed by the accumulator: Σ exp(score - max) · v, head_dim floats (stored separately)
};

// Attends the n_group query heads q[g][head_dim] of one GQA group to keys [t0, t1) of KV head
// `kv_head`, updating state[g] and acc[g][head_dim] (start from max=-inf, sum=0, acc=0).
void attend_key_range(const float* q, int n_group, const KvLayerView& kv, int kv_head, int t0, int t1,
                      float scale, SoftmaxState* state, float* acc);

// Merges partial softmax states (same query head, disjoint key ranges): (b) into (a).
void merge_softmax(SoftmaxState& a, float* acc_a, const SoftmaxState& b, const float* acc_b, int head_dim);

// q: [n_q][n_heads][head_dim] for tokens at positions pos0 .. pos0+n_q-1 (already in the cache);
// query i sees cache tokens [0, pos0 + i]. out: [n_q][n_heads][head_dim].
void attention_dense(const float* q, int n_q, int pos0, int n_heads, const KvLayerView& kv, float scale,
                     float* out, ThreadPool& pool);

}  // namespace pyresa::cpu
