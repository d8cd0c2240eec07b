// The small ops of a forward pass: RoPE fused with the KV-cache store (and, in decode, the block
// descriptor update), greedy sampling, the position counter, and a synthetic cache fill for
// benchmarks. Positions are read from device memory (pos0 = *pos_dev + pos_offset), so a
// captured decode graph replays at any position.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backends/cuda/resa.cuh"

namespace pyresa::cuda {

struct RopeStoreArgs {
  float* q = nullptr;        // [n][n_head * D], rotated in place
  const float* k = nullptr;  // [n][n_kv_head * D]
  const float* v = nullptr;
  int n = 0, n_head = 0, n_kv_head = 0, D = 0;
  float theta_scale = 1.0f;  // base^(-2/D), computed on the host as the CPU does
  bool neox = false;
  const int* pos_dev = nullptr;
  int pos_offset = 0;
  __half* K = nullptr;       // layer base of the cache
  __half* V = nullptr;
  int64_t head_stride = 0;   // elements between KV heads
  // Decode: fold the new keys into their block's running min/max (nullptr: skip).
  __half* desc = nullptr;
  DescLayout desc_layout{};
  int layer = 0;
};
void rope_store(const RopeStoreArgs& a, cudaStream_t stream);

// Workspace of the multi-CTA argmax: a counter (zero between launches) and one pair per CTA.
struct ArgmaxScratch {
  unsigned* counter = nullptr;
  float* val = nullptr;
  int* idx = nullptr;
  int n_ctas = 0;
};
size_t argmax_scratch_bytes(int n_ctas);
// Lays out (and zeroes the counter of) a scratch in `mem` of argmax_scratch_bytes(n_ctas) bytes.
ArgmaxScratch argmax_scratch(void* mem, int n_ctas);
// out[0] = argmax(logits[0 .. n)) (lowest index on ties); also history[*pos_dev + 1] = it when history.
// With a scratch of n_ctas > 1: spread over up to n_ctas CTAs (one stream at a time per scratch).
void argmax(const float* logits, int n, int32_t* out, int32_t* history, const int* pos_dev, cudaStream_t stream,
            const ArgmaxScratch* scratch = nullptr);

// *pos_dev += n
void advance_position(int* pos_dev, int n, cudaStream_t stream);
// *dst = value, in stream order (no host staging buffer to race on).
void set_device_int(int* dst, int value, cudaStream_t stream);
// out[i] = history[*pos_dev + offset + i], i < n
void gather_tokens(const int32_t* history, const int* pos_dev, int offset, int n, int32_t* out, cudaStream_t stream);

// Random F16 keys and values for tokens [0, n_tokens) of every layer and KV head (benchmarks).
void fill_kv_random(__half* K, __half* V, int n_layer, int n_kv_head, int64_t head_stride, int D, int n_tokens,
                    uint64_t seed, cudaStream_t stream);

}  // namespace pyresa::cuda
