// One-token products of K-quant weights (Q4_K, Q6_K) with the memory stream decoupled from the
// arithmetic (sm_90). Why: every earlier one-token kernel (quant.cu's dp4a kernels, matvec_mma.cu)
// issues its weight loads from the warps that also do the arithmetic, and Nsight showed them at
// DRAM 50-63 % with few eligible warps and a loaded latency of several µs, while pure-load kernels
// with the same access patterns read at 2.6-2.7 TB/s. Here one producer thread per CTA streams
// whole 16-row groups of a contiguous span of rows into a ring of shared-memory stages with 1-D
// bulk copies (TMA, completion counted by mbarriers), and 16 consumer warps (one row each) do
// exactly the dp4a kernel's per-lane arithmetic from shared memory: results are bit-identical to
// matvec_rows_kernel (same lanes, same blocks in the same order, same float operations, same
// warp reduction). docs/perf-cuda.md "Run 13-mmvbulk" has the floor, the prediction and the runs:
// on the H100 it is faster on gate+up (-12 %) and the lm head (-17 %, at the pattern read rate),
// slower on down, q/k/v and o (1-2 row groups per CTA: load imbalance and ring fill), slower
// overall (off by default; PYRESA_CUDA_MATVEC_BULK_MIN_GROUPS=8 keeps it to the long products).
#pragma once
#include <cuda_runtime.h>

#include "backends/cuda/quant.cuh"

namespace pyresa::cuda {

// y_i (+)= W_i . act (+ bias_i) for up to 3 weights of one row length, each Q4_K or Q6_K (mixed
// in any order: Q4_K_M's q, k and v in one launch), act one Q8_K row (prepare_activations'
// planes). Returns false, launching nothing, where it does not apply (other types, a GPU before
// sm_90, too little shared memory, or switched off by matvec_bulk_mode()); dry_run: only answer.
bool matvec_bulk(const DeviceWeight* w, const MatvecOut* out, int n_w, const void* act, cudaStream_t stream,
                 bool dry_run = false);

// 0 (default): off; 1: on, 3 stages in the ring; 2-4: on, that many stages (fewer where they do
// not fit); 11-14: the same with each consumer warp issuing one step's loads at a time (the first
// version; else two steps' loads go out together). PYRESA_CUDA_MATVEC_BULK. Where on, matvec_multi / matvec / matvec_rows_prep (prepared
// input) take it for one token before matvec_mma.
int& matvec_bulk_mode();
// Most CTAs of its grid (0: one per SM); tests set it to give each CTA a longer span of rows.
int& matvec_bulk_grid_cap();
// Where on, only launches with at least this many 16-row groups per CTA take it (0: all); the
// others keep the dp4a kernel. 8 keeps it to gate+up and the lm head, where it measured faster
// (run 13-mmvbulk); that combination itself is not yet measured. PYRESA_CUDA_MATVEC_BULK_MIN_GROUPS.
int& matvec_bulk_min_groups();

}  // namespace pyresa::cuda
