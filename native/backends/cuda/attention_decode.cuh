// Decode attention (one token: at most 8 query rows per KV head) on the transposed tensor-core
// kernel of attention_decode.cu; attention() in attention.cu dispatches to it.
#pragma once
#include <cuda_runtime.h>

#include "backends/cuda/attention.cuh"

namespace pyresa::cuda {

// Whether attention() uses the decode kernel (and the parallel combine) where it applies (default
// on; the engine sets it from PYRESA_CUDA_SPARSE_STEP, 0 = the general kernel and the serial
// combine, for A/B runs).
bool& decode_attention_enabled();
// How the decode kernel's splits are merged (PYRESA_CUDA_DECODE_COMBINE): 0 = the separate
// combine_parallel_kernel after it; 1 = inside the attention kernel: the last CTAs of each KV head
// to finish merge the splits' partial results, in the same order as combine_parallel_kernel (the
// same bits), and write the output (needs AttentionArgs::sync).
int& decode_combine_mode();
// The decode kernel's shape (PYRESA_CUDA_DECODE_SHAPE): warps per CTA x 100 + cp.async stages x 10
// + 1 where each warp's S^T product runs as two independent mma chains: 431 (the default since run
// 13: four warps, three stages, two chains), 240 (runs 12: two warps, four stages, one chain), 241,
// 221, 421, 420; other values run the default.
int& decode_attention_shape();
// Tokens per tile of the current shape (16 per warp).
int decode_attention_tile_tokens();
bool decode_attention_applies(int n_tok, int n_head, int n_kv_head, int D);
// CTAs of the decode kernel resident on the whole device (one wave); 0 until
// decode_attention_ctas_per_sm() has been asked on this device.
int decode_attention_resident_ctas();
// Resident CTAs per SM of the decode kernel (its shared memory): the split count that fills one wave.
int decode_attention_ctas_per_sm();
// The partial results per split into a.work (or the output itself when a.n_splits == 1).
void attention_decode_partials(const AttentionArgs& a, cudaStream_t stream);

}  // namespace pyresa::cuda
