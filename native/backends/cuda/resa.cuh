// ReSA on the GPU: block descriptors (element-wise min and max of each block's post-RoPE keys),
// block scores and the top-n_sel selection per layer and KV head (DESIGN.md, "Decode step").
//
// Descriptors are F16 (they are min/max of F16 keys, so F16 is exact) in a layout made for the
// scoring kernel, where one thread scores one block: per (layer, KV head), blocks in groups of
// 32; a group holds 2*D/8 chunks (kmin dims 0..D-1, then kmax), each chunk 32 blocks x 8 halves,
// so a warp reading one chunk of 32 blocks reads 512 contiguous bytes.
//
// Selection follows the CPU's select_blocks exactly: pooled query = mean of the group's query
// heads; score = sum_j max(qp_j kmax_j, qp_j kmin_j) summed in the CPU's order; NaN ranks as
// -inf; ties go to the lower block; the last local_blocks blocks are always kept; the output is
// ascending. Top-n is a radix select on the scores' order-preserving bits.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace pyresa::cuda {

struct DescLayout {
  int n_layer = 0, n_kv_head = 0, D = 0;
  int max_blocks = 0;  // multiple of 32
  int block_size = 16;
  __host__ __device__ size_t elems() const { return (size_t)n_layer * n_kv_head * max_blocks * 2 * D; }
  // kind 0: kmin, 1: kmax
  __host__ __device__ size_t index(int layer, int h, int blk, int kind, int d) const {
    const size_t groups = max_blocks / 32, chunks = 2 * D / 8;
    return ((((size_t)layer * n_kv_head + h) * groups + blk / 32) * chunks + kind * (D / 8) + d / 8) * 256 +
           (blk % 32) * 8 + d % 8;
  }
};

struct ResaParams {
  int block_size = 16;
  double ratio = 0.1;
  int min_blocks = 16;
  int local_blocks = 1;
};

// Recompute the descriptors of every block touched by tokens [first, first + n_tokens), first =
// *pos_dev + pos_offset, from the cache keys; tokens at or past first + n_tokens do not count.
void refresh_descriptors(__half* desc, const DescLayout& L, int layer, const __half* K, int64_t head_stride,
                         const int* pos_dev, int pos_offset, int n_tokens, cudaStream_t stream);

// Selection for one layer and decode step with the context n_tokens = *pos_dev + 1.
//   q: [n_head][D] F32; keys: scratch [n_kv_head][max_blocks] uint32
//   blocks: out [n_kv_head][blocks_stride]; n_sel_out: n_sel (one int)
void select_blocks(const float* q, int n_head, const __half* desc, const DescLayout& L, int layer, const ResaParams& p,
                   const int* pos_dev, uint32_t* keys, int32_t* blocks, int64_t blocks_stride, int* n_sel_out,
                   cudaStream_t stream);

// The two launches of select_blocks, apart (for timing each).
void score_blocks(const float* q, int n_head, const __half* desc, const DescLayout& L, int layer, const ResaParams& p,
                  const int* pos_dev, uint32_t* keys, cudaStream_t stream);
void select_top_blocks(const DescLayout& L, const ResaParams& p, const int* pos_dev, const uint32_t* keys,
                       int32_t* blocks, int64_t blocks_stride, int* n_sel_out, cudaStream_t stream);

}  // namespace pyresa::cuda
