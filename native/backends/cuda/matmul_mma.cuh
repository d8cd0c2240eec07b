// The products of a few tokens (a rectification's 33, in general 1..64) on the int8 tensor
// cores, with Q8_K activations, as llama.cpp's MMQ does. Why: dequant_matmul_small (dqmm-pipe,
// quant.cu) dequantizes every weight to F16 in registers, ~11 instructions per weight to be
// exact, and is instruction-bound at ~0.7 TB/s (docs/perf-cuda.md, run 10-dqmm-pipe). Here the
// quantized values go into mma.sync as they are (Q4_K nibbles as u8, Q6_K's 6-bit values minus 32
// as s8), one s32 dot product per (row, token, scale group), and the scale groups are applied
// with one integer multiply-add per element: the CPU's vec_dot arithmetic over Q8_K rows (the
// same integers; only the float sum over superblocks is ordered differently).
// docs/perf-cuda.md "Run 12-rectmmq" has the floor, the prediction and the measurements: on the
// H100 it is latency-bound (~0.86 TB/s at 33 tokens), only 9 % faster than dqmm-pipe, not 3x.
#pragma once
#include <cuda_runtime.h>

#include "backends/cuda/quant.cuh"

namespace pyresa::cuda {

// y[m][n] (+)= W[n] . act[m] (+ bias[n]) for 1 <= M <= 64 tokens; act: M Q8_K activation rows
// (prepare_activations' planes), act_row_bytes apart. W Q4_K or Q6_K. K is split over CTAs
// "stream-K" (one wave): tiles shared by CTAs go through ws (2 * grid * M * 256 floats) and a
// reduce kernel that adds them in CTA order (deterministic). Returns false, launching nothing,
// where it does not apply (other types, M > 64, rows not whole superblocks, too small a
// workspace, or switched off by small_mmq_mode()); dry_run: only answer (act may be null).
bool matmul_mma(const DeviceWeight& w, const void* act, size_t act_row_bytes, int M, float* y, int64_t ldy,
                const float* bias, bool accumulate, int n_sm, float* ws, size_t ws_floats, cudaStream_t stream,
                bool dry_run = false);

// 1: the engine's products of 2..64 tokens (Path::Small) of Q4_K / Q6_K weights take matmul_mma
// with Q8_K activations (the engine's default since run 12-rectmmq: faster than dqmm-pipe on the
// H100 at 16-64 tokens, by 3-14 %); 0: dequant_matmul_small with F16 activations.
// 2: the same kernel with two CTAs of 16-row warps per SM (<= 128 registers: twice the warps
// to hide latency; written after the run, not yet measured). PYRESA_CUDA_SMALL_MMQ.
// (The library's own default is 0: the engine sets it.)
int& small_mmq_mode();
// Ring depth of matmul_mma's cp.async stages (0: the most that fit, at most 4; else 2..4).
// PYRESA_CUDA_SMALL_MMQ_STAGES.
int& small_mmq_stages();
// Most CTAs of its grid (0: one per SM); tests set it to make CTAs share tiles.
int& small_mmq_grid_cap();

}  // namespace pyresa::cuda
