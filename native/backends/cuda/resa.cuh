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

// The selection's scratch (the `keys` argument below): the blocks' keys [n_kv_head][max_blocks]
// uint32, then each scoring warp's (min, max) key [n_kv_head][select_range_stride(L)] uint2 (warp w
// covers the keys of blocks 32w .. 32w + 31), which the cluster top-n reads instead of reducing
// the keys itself. Nothing in it needs initialising.
__host__ __device__ inline int select_range_stride(const DescLayout& L) { return (L.max_blocks / 32 + 1) & ~1; }
inline size_t select_scratch_bytes(const DescLayout& L) {
  return (size_t)L.n_kv_head * L.max_blocks * 4 + (size_t)L.n_kv_head * select_range_stride(L) * 8;
}

// Which top-n runs (environment switches of the engine, set by the test hooks too):
//   topn: 0 = select_kernel (one 1024-thread CTA per KV head, PYRESA_CUDA_TOPN=old),
//         1 = the cluster kernel of select_cluster.cu (default where it applies: sm_90, <= 65,536 blocks)
//   topn_ctas: cluster size forced (PYRESA_CUDA_TOPN_CTAS, 1-16; 0 = from max_blocks)
//   score_trigger: the scoring triggers its dependents at its start (PYRESA_CUDA_SCORE_TRIGGER=1)
//   score_early_q: the scoring reads the query before the position (default; PYRESA_CUDA_SCORE_EARLY_Q=0
//                  reads the position first, as before run 11)
//   topn_stop: bench only, the cluster kernel stops after phase 1 (the launch and the wait), 2
//              (loads and key range), 3 (first radix pass) or 4 (every pass), writing no block
//              list: its phases timed apart
struct SelectConfig {
  int topn = 1;
  int topn_ctas = 0;
  bool score_trigger = false;
  bool score_early_q = true;
  int topn_stop = 0;
};
SelectConfig& select_config();

// The cluster top-n's size for this layout and the current device and settings, 0 where it does
// not apply (before sm_90, more than 65,536 blocks). Its first call queries the device: make it
// before a graph capture (the engine does at allocation).
int select_cluster_size(const DescLayout& L);
// The cluster top-n (select_cluster.cu); returns false, launching nothing, where it does not apply.
bool select_top_blocks_cluster(const DescLayout& L, const ResaParams& p, const int* pos_dev, const uint32_t* scratch,
                               int32_t* blocks, int64_t blocks_stride, int* n_sel_out, cudaStream_t stream);

// Recompute the descriptors of every block touched by tokens [first, first + n_tokens), first =
// *pos_dev + pos_offset, from the cache keys; tokens at or past first + n_tokens do not count.
void refresh_descriptors(__half* desc, const DescLayout& L, int layer, const __half* K, int64_t head_stride,
                         const int* pos_dev, int pos_offset, int n_tokens, cudaStream_t stream);

// Selection for one layer and decode step with the context n_tokens = *pos_dev + 1.
//   q: [n_head][D] F32; keys: scratch of select_scratch_bytes(L)
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
