// One-token products of K-quant weights on the int8 tensor cores (mma.sync m16n8k32 / m16n8k16,
// u8 weights x s8 activations). Why: the dp4a kernels of quant.cu spend ~4 bytes of weights per
// warp instruction (unpacking, decoding Q4_K's packed 6-bit scales in every lane, per-lane float
// scaling), so their instruction issue, not DRAM, caps them at ~60 % of the copy rate. Here one
// warp instruction multiplies 16 rows x 32 weights, and the per-sub-block scales are applied once
// per (row, sub-block) instead of once per lane: ~15-20 bytes per instruction, so the products
// become memory-bound. docs/perf-cuda.md "Run 11-mmv" has the floor, the prediction and the runs:
// on the H100 they are not faster than the dp4a kernels (off by default).
#pragma once
#include <cuda_runtime.h>

#include "backends/cuda/quant.cuh"

namespace pyresa::cuda {

// y_i (+)= W_i . act (+ bias_i) for up to 3 weights of one row length, each Q4_K or Q6_K (the two
// may be mixed: Q4_K_M's q, k and v in one launch), act one Q8_K row (prepare_activations'
// planes). Same quantized integers as the CPU's vec_dot; the float scaling is grouped
// differently (rounding only). Returns false, launching nothing, where it does not apply (other
// types, or switched off by matvec_mma_mode()); dry_run: only answer.
bool matvec_mma(const DeviceWeight* w, const MatvecOut* out, int n_w, const void* act, cudaStream_t stream,
                bool dry_run = false);

// 1: matvec_multi / matvec / matvec_rows_prep take matvec_mma for one token where it applies;
// 2: the same with Q4_K rows streamed through a shared-memory ring by cp.async; 3: launches of
// one weight type pipelined (the next superblock's loads, also the next item's, in flight while
// the current one is multiplied; mixed launches as 1); 0 (default):
// the dp4a kernels of quant.cu, which measured faster on the H100 (docs/perf-cuda.md, run 11-mmv).
// PYRESA_CUDA_MATVEC_MMA.
int& matvec_mma_mode();
// K parts per 16-row tile (1, 2, 4 or 8 warps of a CTA share a tile, partial sums added in
// shared memory in a fixed order); 0: chosen from the shape. Tests set it.
int& matvec_mma_split();
// Most CTAs of its grid (0: as many as fit on the GPU at once; each CTA loops over item groups).
// Tests set it to exercise the loop.
int& matvec_mma_grid_cap();

}  // namespace pyresa::cuda
