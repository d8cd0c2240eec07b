// The attention inner loop, written once over a small SIMD wrapper and compiled per ISA
// (attention_scalar/avx2/avx512.cpp include this with their own `Simd`). Keys are taken in
// blocks of 16: score the block for every query head of the GQA group (each K row is
// loaded once), one softmax rescale per block, then accumulate the V rows.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "backends/cpu/attention.h"
#include "formats/fp16.h"

namespace pyresa::cpu::attention_detail {

constexpr int kKeyBlock = 16;
constexpr int kMaxGroup = 16;
constexpr int kMaxHeadDim = 256;

// exp(x) for x ≤ 0 (scores minus the running max), ~1e-7 relative error, branch-free so the
// loop over a block vectorizes. Cody-Waite range reduction + degree-6 polynomial.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

template <typename Simd>
void attend_key_range_impl(const float* q, int n_group, const KvLayerView& kv, int kv_head, int t0, int t1,
                           float scale, SoftmaxState* state, float* acc) {
  using V = typename Simd::V;
  constexpr int W = Simd::W;
  const int d = kv.head_dim;
  const int nv = d / W;  // vectors per head (head_dim is a multiple of 16 for supported models)
  const fp16_t* kbase = kv.k + kv_head * kv.head_stride;
  const fp16_t* vbase = kv.v + kv_head * kv.head_stride;

  alignas(64) float s[kMaxGroup][kKeyBlock];
  V qv[kMaxGroup][kMaxHeadDim / W];
  // The query is rounded to F16 before the dot products and the scale applied after them, as
  // llama.cpp's attention does (it converts Q to the F16 cache's dot type): on small models the
  // logits are sensitive enough that this rounding decides ~1% of top-1 tokens.
  alignas(64) float qh[kMaxHeadDim];
  for (int g = 0; g < n_group; ++g) {
    for (int i = 0; i < d; ++i) qh[i] = fp16_to_fp32(fp32_to_fp16(q[g * d + i]));
    for (int i = 0; i < nv; ++i) qv[g][i] = Simd::load(qh + i * W);
  }

  for (int b = t0; b < t1; b += kKeyBlock) {
    const int nb = std::min(kKeyBlock, t1 - b);
    for (int j = 0; j < nb; ++j) {
      const fp16_t* krow = kbase + static_cast<size_t>(b + j) * d;
      V kr[kMaxHeadDim / W];
      for (int i = 0; i < nv; ++i) kr[i] = Simd::load_half(krow + i * W);
      for (int g = 0; g < n_group; ++g) {
        V sum = Simd::mul(qv[g][0], kr[0]);
        for (int i = 1; i < nv; ++i) sum = Simd::fma(qv[g][i], kr[i], sum);
        s[g][j] = Simd::reduce_add(sum) * scale;
      }
    }
    for (int g = 0; g < n_group; ++g) {
      float block_max = s[g][0];
      for (int j = 1; j < nb; ++j) block_max = std::max(block_max, s[g][j]);
      SoftmaxState& st = state[g];
      float* a = acc + g * d;
      if (block_max > st.max) {
        const float correction = st.sum == 0.0f ? 0.0f : exp_nonpositive(st.max - block_max);
        st.sum *= correction;
        const V c = Simd::set1(correction);
        for (int i = 0; i < nv; ++i) Simd::store(a + i * W, Simd::mul(Simd::load(a + i * W), c));
        st.max = block_max;
      }
      for (int j = 0; j < nb; ++j) s[g][j] = exp_nonpositive(s[g][j] - st.max);
      for (int j = 0; j < nb; ++j) st.sum += s[g][j];
    }
    // Accumulate V: each V row converted once, then added to every head of the group.
    for (int j = 0; j < nb; ++j) {
      const fp16_t* vrow = vbase + static_cast<size_t>(b + j) * d;
      for (int i = 0; i < nv; ++i) {
        const V vr = Simd::load_half(vrow + i * W);
        for (int g = 0; g < n_group; ++g) {
          float* a = acc + g * d + i * W;
          Simd::store(a, Simd::fma(Simd::set1(s[g][j]), vr, Simd::load(a)));
        }
      }
    }
  }
}

}  // namespace pyresa::cpu::attention_detail
