// Stream-K for the batched products (dqmm_pipe.cuh, matmul_mma.cu): the (row tile, K slice)
// units of a product are split evenly over a one-wave grid, CTA i taking units
// [stream_k_unit_begin(i), stream_k_unit_begin(i + 1)). A CTA that covers a whole tile writes y
// itself; the segments of a tile that CTAs share go to a workspace (two slots per CTA: the segment
// that ends its range's first tile, and the one that starts its last) and stream_k_reduce adds
// them in CTA order, the same order whatever the timing (deterministic results).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyresa::cuda {

__host__ __device__ inline int stream_k_unit_begin(int i, int units, int grid) {
  return (int)((int64_t)i * units / grid);
}

// What stream_k_reduce needs of a product: y[m][n] (+)= sum of the segments (+ bias[n]).
struct StreamKReduce {
  float* y;
  int64_t ldy;
  const float* bias;
  bool accumulate;
  int M;                 // tokens
  int64_t N;             // weight rows
  int bn;                // rows per tile
  int units_per_tile;    // K slices per tile
  int units;             // tiles * units_per_tile
  const float* partial;  // [2 * grid][M][bn]
};

// The tiles that CTAs share: their segments added in CTA order. Call from a grid-stride kernel
// launched after the product (PDL: after pdl_wait).
__device__ inline void stream_k_reduce(const StreamKReduce& r, int grid) {
  const int64_t total = (int64_t)r.M * r.N;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    const int m = (int)(idx / r.N);
    const int64_t n = idx % r.N;
    const int tile = (int)(n / r.bn), nl = (int)(n % r.bn);
    const int lo = tile * r.units_per_tile, hi = lo + r.units_per_tile;
    // CTA holding unit x: the largest i with begin(i) <= x
    const int i0 = (int)(((int64_t)(lo + 1) * grid + r.units - 1) / r.units) - 1;
    const int i1 = (int)(((int64_t)hi * grid + r.units - 1) / r.units) - 1;
    if (i0 == i1) continue;  // one CTA did the whole tile and wrote y itself
    float v = 0.0f;
    for (int i = i0; i <= i1; ++i) {
      const int slot = 2 * i + (stream_k_unit_begin(i, r.units, grid) >= lo ? 0 : 1);
      v += r.partial[((size_t)slot * r.M + m) * r.bn + nl];
    }
    if (r.bias) v += r.bias[n];
    float* dst = r.y + m * r.ldy + n;
    *dst = r.accumulate ? *dst + v : v;
  }
}

}  // namespace pyresa::cuda
