// The end of every attention kernel's row (attention.cu, attention_batched.cu,
// attention_wgmma.cu, attention_decode.cu): where a finished row's O goes and how it is scaled.
// With one split over the sequence the row is final: O / l into the output. With several, the
// split's unnormalised O and its (m, l) go to the split's slot of the workspace, for the
// log-sum-exp combine (attention.cu). The kernels differ only in which of a row's values a thread
// holds (its fragment layout), so each passes an accessor for its own pieces.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backends/cuda/attention.cuh"

namespace pyresa::cuda {

// One piece of a thread's share of a row: W consecutive dimensions from `col` on (W = 2: stored
// as one float2, the mma accumulator layout; W = 1: a single float, the transposed layout).
template <int W>
struct RowPiece {
  int col;
  float v[W];
};

// Stores row r (< R) of KV head h: the N pieces piece(j), j < N, of this thread's share of it.
// m and l are the row's running maximum (log2 domain) and sum over this split, l already summed
// over the lanes that share the row; writes_ml: this thread writes (m, l) of a partial row (one
// thread per row). The partials are stored unscaled (not x 1.0: the same bits either way, but
// no multiplications).
template <int D, int N, int W, typename Piece>
__device__ __forceinline__ void store_attention_row(const AttentionArgs& a, int r, int h, int split, int n_splits,
                                                    float m, float l, bool writes_ml, Piece&& piece) {
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  auto put = [](float* p, const RowPiece<W>& x, float s, bool scaled) {
    if constexpr (W == 2) {
      *reinterpret_cast<float2*>(p + x.col) = scaled ? make_float2(x.v[0] * s, x.v[1] * s) : make_float2(x.v[0], x.v[1]);
    } else {
      p[x.col] = scaled ? x.v[0] * s : x.v[0];
    }
  };
  if (n_splits == 1) {
    float* dst = a.out + (r / G) * a.out_stride + (int64_t)(h * G + r % G) * D;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) put(dst, piece(j), inv, true);
  } else {
    float* dst = a.work + ((int64_t)(h * n_splits + split) * R + r) * (D + 2);
#pragma unroll
    for (int j = 0; j < N; ++j) put(dst, piece(j), 1.0f, false);
    if (writes_ml) {
      dst[D] = m;
      dst[D + 1] = l;
    }
  }
}

// The mma.m16n8k16 accumulator layout (attention.cu, attention_batched.cu, attention_wgmma.cu):
// the thread's row (g4 or g4 + 8 of a 16-row tile) holds dimensions 8 nd + 2 t4 and + 1 of
// n-tile nd, pair(nd) (a float2). Sums l over the row's 4 lanes (every lane must call), then
// stores the row if r < R.
template <int D, typename Pair>
__device__ __forceinline__ void store_mma_row(const AttentionArgs& a, int r, int h, int split, int n_splits, float m,
                                              float l, int t4, Pair&& pair) {
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (r >= a.n_tok * (a.n_head / a.n_kv_head)) return;
  store_attention_row<D, D / 8, 2>(a, r, h, split, n_splits, m, l, t4 == 0, [&](int nd) {
    const float2 x = pair(nd);
    return RowPiece<2>{8 * nd + 2 * t4, {x.x, x.y}};
  });
}

}  // namespace pyresa::cuda
