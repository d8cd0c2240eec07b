// C[m][n] (+)= sum_k A[m][k] * B[n][k] (+ bias[n]) on tensor cores: A [M][K] F16 activations,
// B [N][K] F16 weights (dequantized), C F32. K % 32 == 0; rows 16-byte aligned.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pyresa::cuda {

void gemm_f16(const __half* A, int64_t lda, const __half* B, int64_t ldb, float* C, int64_t ldc, int M, int N, int K,
              const float* bias, bool accumulate, cudaStream_t stream);

}  // namespace pyresa::cuda
