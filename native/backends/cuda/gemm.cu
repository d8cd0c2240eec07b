// A plain multistage tensor-core GEMM: 128x128 tiles, 32-deep k steps, 8 warps of 64x32, three
// cp.async stages, ldmatrix from padded shared rows (80-byte stride: conflict-free).
#include <stdexcept>

#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/gemm.cuh"
#include "backends/cuda/mma.cuh"

namespace pyresa::cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 32, PAD = 8, LDS = BK + PAD, STAGES = 3, THREADS = 256;

__global__ void __launch_bounds__(THREADS) gemm_kernel(const __half* __restrict__ A, int64_t lda,
                                                       const __half* __restrict__ B, int64_t ldb, float* C,
                                                       int64_t ldc, int M, int N, int K, const float* bias,
                                                       bool accumulate) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* As = reinterpret_cast<__half*>(smem_raw);
  __half* Bs = As + STAGES * BM * LDS;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // 2 x 4 warps
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int k_tiles = K / BK;

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * THREADS;  // 512 chunks of 16 B per operand
      const int r = c >> 2, kc = (c & 3) * 8;
      const int gm = m0 + r, gn = n0 + r;
      cp_async16(As + (stage * BM + r) * LDS + kc, A + (int64_t)(gm < M ? gm : 0) * lda + k0 + kc, gm < M ? 16 : 0);
      cp_async16(Bs + (stage * BN + r) * LDS + kc, B + (int64_t)(gn < N ? gn : 0) * ldb + k0 + kc, gn < N ? 16 : 0);
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = kt + STAGES - 1;
    if (nk < k_tiles) load_stage(nk % STAGES, nk);
    cp_async_commit();
    const int st = kt % STAGES;
    const __half* as = As + st * BM * LDS;
    const __half* bs = Bs + st * BN * LDS;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int r = wm * 64 + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int c = kk + (lane >> 4) * 8;
        ldmatrix_x4(af[mi][0], af[mi][1], af[mi][2], af[mi][3], as + r * LDS + c);
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        // matrices: (n-tile 2nj, k lo), (2nj, k hi), (2nj+1, k lo), (2nj+1, k hi)
        const int r = wn * 32 + nj * 16 + (lane & 7) + (lane >> 4) * 8;
        const int c = kk + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(bf[2 * nj][0], bf[2 * nj][1], bf[2 * nj + 1][0], bf[2 * nj + 1][1], bs + r * LDS + c);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
  }
  cp_async_wait<0>();

  const int g4 = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int hrow = 0; hrow < 2; ++hrow) {
        const int m = m0 + wm * 64 + mi * 16 + g4 + hrow * 8;
        if (m >= M) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + wn * 32 + ni * 8 + 2 * t4 + e;
          if (n >= N) continue;
          float v = acc[mi][ni][hrow * 2 + e];
          if (bias) v += bias[n];
          float* c = C + (int64_t)m * ldc + n;
          *c = accumulate ? *c + v : v;
        }
      }
}

}  // namespace

void gemm_f16(const __half* A, int64_t lda, const __half* B, int64_t ldb, float* C, int64_t ldc, int M, int N, int K,
              const float* bias, bool accumulate, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  if (K % BK) throw std::invalid_argument("gemm_f16: K must be a multiple of 32");
  const size_t smem = (size_t)STAGES * (BM + BN) * LDS * sizeof(__half);
  static bool configured = false;
  if (!configured) {
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  launch(gemm_kernel, grid, THREADS, smem, stream, A, lda, B, ldb, C, ldc, M, N, K, bias, accumulate);
  PYRESA_CUDA_LAUNCH_CHECK();
}

}  // namespace pyresa::cuda
