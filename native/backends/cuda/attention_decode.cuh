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
// cp.async stages per CTA: 4 (default, 3 CTAs per SM), 6 (2 per SM) or 12 (1 per SM); the split
// count follows (one wave). Set from PYRESA_CUDA_DECODE_STAGES by the engine.
int& decode_attention_stages();
// Warps per CTA of the decode kernel: 1 (run 9) or 2 (run 11: each warp one 16-token span of
// every tile, 4 stages). Set from PYRESA_CUDA_DECODE_WARPS by the engine.
int& decode_attention_warps();
// How the decode kernel's splits are merged (PYRESA_CUDA_DECODE_COMBINE): 0 = the separate
// combine_parallel_kernel after it; 1 = inside the attention kernel: the last CTAs of each KV head
// to finish merge the splits' partial results, in the same order as combine_parallel_kernel (the
// same bits), and write the output (needs AttentionArgs::sync).
int& decode_combine_mode();
bool decode_attention_applies(int n_tok, int n_head, int n_kv_head, int D);
// CTAs of the decode kernel resident on the whole device (one wave); 0 until
// decode_attention_ctas_per_sm() has been asked on this device.
int decode_attention_resident_ctas();
// Resident CTAs per SM of the decode kernel (its shared memory): the split count that fills one wave.
int decode_attention_ctas_per_sm();
// The partial results per split into a.work (or the output itself when a.n_splits == 1).
void attention_decode_partials(const AttentionArgs& a, cudaStream_t stream);

}  // namespace pyresa::cuda
