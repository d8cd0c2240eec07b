// Weights on the GPU and the formats activations are quantized to for integer dot products.
//
// Weights keep ggml's block layouts, copied as they are, except Q6_K: its 210-byte blocks are
// only 2-byte aligned, so at upload each matrix is split into four aligned planes (ql, qh,
// scales, d) and the kernels read 16 bytes per load. The values are untouched.
//
// Activations are quantized exactly as the CPU backend does (same rounding rules, same formats:
// Q8_0 / Q8_1 for the legacy types, Q8_K for the K-quants, F32 for float weights), so every
// integer block sum equals the CPU's and only the float accumulation order differs. On the GPU
// an activation row is stored as planes too: the int8 quants (16-byte aligned), then the scales.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backends/cuda/common.cuh"
#include "formats/ggml_types.h"

namespace pyresa::cuda {

struct DeviceWeight {
  GgmlType type = GgmlType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;  // raw ggml rows, or the Q6_K planes (ql, qh, scales, d)
  size_t row_bytes = 0;           // raw ggml row size
  bool present() const { return data != nullptr; }
  int64_t blocks_per_row() const;
};

// Device bytes a weight occupies once uploaded (equal to the ggml size).
size_t device_weight_bytes(GgmlType type, int64_t rows, int64_t cols);
// Copies (and for Q6_K re-lays out) rows x cols ggml data from host `src` to device `dst`.
DeviceWeight upload_weight(GgmlType type, int64_t rows, int64_t cols, const void* src, uint8_t* dst);

// The activation format a weight type's dot products take (F32, Q8_0, Q8_1 or Q8_K).
GgmlType act_type_for(GgmlType weight_type);
// Bytes of one activation row of `cols` values in a format (F32, F16, Q8_0, Q8_1, Q8_K); multiple of 16.
size_t act_row_bytes(GgmlType act_type, int64_t cols);

// out row t = format(transform(x row t)), transform one of:
enum class ActTransform { Plain, RmsNorm, SwiGLU };
struct ActPrep {
  ActTransform transform = ActTransform::Plain;
  const float* x = nullptr;      // [n_rows][ld_x]
  const float* up = nullptr;     // SwiGLU: silu(x) * up, same layout as x
  const float* norm_w = nullptr; // RmsNorm: x / rms(x) * norm_w
  float eps = 1e-5f;
  int64_t ld_x = 0;
  // F16 activations only: set to 1 (device memory) where a finite value is past F16's range
  // (65504) and became inf; the engine then redoes the products on the Q8_K path.
  int* f16_overflow = nullptr;
};
void prepare_activations(const ActPrep& p, GgmlType act_type, int n_rows, int64_t cols, void* out,
                         size_t out_row_bytes, cudaStream_t stream);

// y[t][r] (+)= W[r] . act[t]  (+ bias[r]) for t < n_tokens, act in act_type_for(W.type).
struct MatvecOut {
  float* y = nullptr;
  int64_t ldy = 0;
  const float* bias = nullptr;
  bool accumulate = false;  // y += result (a residual add fused into the product)
};
void matvec(const DeviceWeight& w, const void* act, size_t act_row_bytes, int n_tokens, const MatvecOut& out,
            cudaStream_t stream);
// Rows per warp of the one-token K-quant matvec (1: the general kernel, one row per warp; 2 or
// 4: matvec_rows_kernel, bit-identical results). Set from PYRESA_CUDA_MATVEC_ROWS by the engine.
int& matvec_rows_per_warp();
// Steps (of 4 superblocks per row) whose loads are issued together (1, 2, 4; R * steps <= 4).
// PYRESA_CUDA_MATVEC_STEPS.
int& matvec_steps();
// Most CTAs of the one-token K-quant matvec (0: one CTA per 4 warps' rows, as many as needed;
// n > 0: a persistent grid of n CTAs looping over the rows, prefetching each warp's next rows
// into L2). The engine sets n_sm * PYRESA_CUDA_MATVEC_CTAS_PER_SM.
int& matvec_grid_cap();
// 1: the one-token Q4_K matvec takes 4 lanes per superblock (matvec_q4k_wide_kernel: fewer
// instructions per byte; float rounding differs from the 8-lane kernel), with the steps above;
// 2: the same with one step per load round. PYRESA_CUDA_MATVEC_WIDE.
int& matvec_wide();
// Not 0: one-token K-quant rows of >= 32 superblocks (the FFN down product) are split over the 4
// warps of a CTA, partial sums added in shared memory in a fixed order; 1 with the rows per warp
// and steps above, 10 * rows + steps (12, 21, 22) with its own. PYRESA_CUDA_MATVEC_KSPLIT.
int& matvec_ksplit();
// The one-token K-quant matvec's bulk L2 prefetch of its rows before waiting on the previous
// kernel: 0 none, 1 Q4_K/Q5_K only (before run 9), 2 Q6_K's planes too. PYRESA_CUDA_MATVEC_PREFETCH.
int& matvec_prefetch();
// Several weights (same type and row length, at most 3) on the same activations, one launch.
void matvec_multi(const DeviceWeight* w, const MatvecOut* out, int n_w, const void* act, size_t act_row_bytes,
                  int n_tokens, cudaStream_t stream);

// One token, up to 3 K-quant weights of one row length on the same input, one launch
// (matvec_rows_prep_kernel, the arithmetic of the default 2-rows x 2-steps kernel):
//  - prep given (Plain or RmsNorm, row 0 of prep.x): each CTA quantizes the row to Q8_K itself,
//    into shared memory, bit-identical to prepare_activations (no prepare kernel; act unused);
//  - prep null: the Q8_K activations at act, as matvec_multi.
// The weights may be of two types, Q4_K or Q5_K and Q6_K, grouped (Q4_K_M's q, k and v; or v, q, k).
// Returns false, launching nothing, where it does not apply (other types or settings; then use
// prepare_activations + matvec_multi). dry_run: only answer that. act_dump (tests): CTA 0's
// activation row (act_row_bytes(Q8_K, cols) bytes) is copied there.
bool matvec_rows_prep(const DeviceWeight* w, const MatvecOut* out, int n_w, const ActPrep* prep, const void* act,
                      cudaStream_t stream, bool dry_run = false, uint8_t* act_dump = nullptr);
// Most CTAs of matvec_rows_prep's grid (0: matvec_grid_cap()); the engine sets n_sm *
// PYRESA_CUDA_FUSE_CTAS_PER_SM (a persistent grid prepares the row once per CTA, not per item).
int& matvec_prep_grid_cap();

// One token: gate = W_gate . act, up = W_up . act (Q8_K act, no bias), and in the same launch the
// down product's input, Q8_K(silu(gate) * up), written to act_out (act_row_bytes(Q8_K, rows))
// bit-identical to prepare_activations(SwiGLU): each 256-row block is quantized by the CTA that
// completes it (counters: rows / 256 ints, zero, left zero). False (nothing launched) where it
// does not apply; dry_run: only answer. PYRESA_CUDA_GLU_EPILOGUE.
bool matvec_gate_up_glu(const DeviceWeight& gate, const DeviceWeight& up, float* y_gate, float* y_up, const void* act,
                        int* counters, void* act_out, cudaStream_t stream, bool dry_run = false);

// y[m][n] (+)= W[n] . A[m] (+ bias[n]) for M <= 64 tokens of F16 activations (lda halves apart):
// W is dequantized tile by tile into shared memory and multiplied on tensor cores, read once.
// ws: workspace for K-split partial sums (ws_floats floats; null: no split).
void dequant_matmul_small(const DeviceWeight& w, const __half* A, int64_t lda, int M, float* y, int64_t ldy,
                          const float* bias, bool accumulate, int n_sm, float* ws, size_t ws_floats,
                          cudaStream_t stream);

// Which kernel dequant_matmul_small takes for Q4_K / Q6_K: 0 dqmm_kernel (one stage, the only one
// before run 10; every other format), 1-3 dqmm_pipe_kernel (cp.async ring, stream-K; 1: 8 warps,
// one CTA per SM; 2: 8 warps, two CTAs per SM; 3: 16 warps; others: 1). PYRESA_CUDA_DQMM ("old" = 0).
// Its ring depth (0: 2, the fastest measured; at most 4 and what fits; PYRESA_CUDA_DQMM_STAGES)
// and L2 prefetch distance in slices (0 off; PYRESA_CUDA_DQMM_PREFETCH; + 100: also trigger the
// next kernel's launch (PDL) when a CTA starts its last slice).
constexpr int kDqmmDefaultVariant = 1;
int& dqmm_variant();
int& dqmm_stages();
int& dqmm_prefetch();

// Rows of W to float (embedding lookup): dst[i][:] = W[rows[i]], rows on the device.
void dequantize_rows_f32(const DeviceWeight& w, const int32_t* rows, int n, float* dst, int64_t ld_dst,
                         cudaStream_t stream);
// Rows [r0, r0 + n_rows) of W to F16, row-major [n_rows][cols] (for the tensor-core GEMM).
void dequantize_rows_f16(const DeviceWeight& w, int64_t r0, int64_t n_rows, __half* dst, cudaStream_t stream);

}  // namespace pyresa::cuda
