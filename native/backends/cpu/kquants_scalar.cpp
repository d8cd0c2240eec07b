// K-quant kernels in portable C++: the reference the SIMD files are tested against, and the
// fallback on CPUs without AVX2. Semantics follow gguf.quants (see kquants_common.h).
#include <cmath>
#include <cstdlib>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/kquants_common.h"
#include "formats/fp16.h"

namespace pyresa::cpu::scalar {

namespace {

// ---- dequantization -------------------------------------------------------------------

// Q4_K: each 32 bytes of qs hold two sub-blocks: low nibbles the first, high nibbles the second.
void dequantize_row_q4_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q4_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q4_K& b = blocks[i];
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    const ScalesMins sm = unpack_scales_mins(b.scales);
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = b.qs + 32 * c;
      const float d0 = d * sm.sc[2 * c], m0 = dmin * sm.m[2 * c];
      const float d1 = d * sm.sc[2 * c + 1], m1 = dmin * sm.m[2 * c + 1];
      for (int l = 0; l < 32; ++l) y[l] = d0 * (q[l] & 0xF) - m0;
      for (int l = 0; l < 32; ++l) y[32 + l] = d1 * (q[l] >> 4) - m1;
      y += 64;
    }
  }
}

// Q5_K: as Q4_K, plus bit j of qh[l] is the fifth bit of element l of sub-block j.
void dequantize_row_q5_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q5_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q5_K& b = blocks[i];
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    const ScalesMins sm = unpack_scales_mins(b.scales);
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = b.qs + 32 * c;
      const int j0 = 2 * c, j1 = 2 * c + 1;
      const float d0 = d * sm.sc[j0], m0 = dmin * sm.m[j0];
      const float d1 = d * sm.sc[j1], m1 = dmin * sm.m[j1];
      for (int l = 0; l < 32; ++l) y[l] = d0 * ((q[l] & 0xF) | (((b.qh[l] >> j0) & 1) << 4)) - m0;
      for (int l = 0; l < 32; ++l) y[32 + l] = d1 * ((q[l] >> 4) | (((b.qh[l] >> j1) & 1) << 4)) - m1;
      y += 64;
    }
  }
}

// Q6_K: two halves of 128. In half h, element 32k+l (k<4, l<32) takes its low 4 bits from
// ql[64h + 32*(k&1) + l] (low nibble for k<2, high for k>=2) and its top 2 bits from
// bits 2k..2k+1 of qh[32h + l]; q - 32 is scaled by scales[element/16]. Unpacks q (0..63).
inline void unpack_q6(const block_q6_K& x, uint8_t* q) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t ql0 = x.ql[64 * h + l], ql1 = x.ql[64 * h + 32 + l], qh = x.qh[32 * h + l];
      q[128 * h + l] = (ql0 & 0xF) | ((qh & 3) << 4);
      q[128 * h + 32 + l] = (ql1 & 0xF) | (((qh >> 2) & 3) << 4);
      q[128 * h + 64 + l] = (ql0 >> 4) | (((qh >> 4) & 3) << 4);
      q[128 * h + 96 + l] = (ql1 >> 4) | (((qh >> 6) & 3) << 4);
    }
}

void dequantize_row_q6_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q6_K*>(src);
  uint8_t q[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q6_K& b = blocks[i];
    const float d = fp16_to_fp32(b.d);
    unpack_q6(b, q);
    for (int g = 0; g < QK_K / 16; ++g) {
      const float dg = d * b.scales[g];
      for (int l = 16 * g; l < 16 * g + 16; ++l) y[l] = dg * (q[l] - 32);
    }
    y += QK_K;
  }
}

void dequantize_row_q8_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q8_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    for (int l = 0; l < QK_K; ++l) y[l] = blocks[i].d * blocks[i].qs[l];
    y += QK_K;
  }
}

// ---- activation quantization --------------------------------------------------------

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the rounded integer
// in the low mantissa bits (float addition rounds half to even, as cvtps2dq does). Unlike
// lrint this vectorizes on the baseline ISA. |iscale * x| <= 127 here, so no clamp is needed.
inline int32_t round_half_even_small(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

void quantize_row_q8_K(const float* x, void* dst, int64_t n) {
  auto* blocks = static_cast<block_q8_K*>(dst);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    block_q8_K& b = blocks[i];
    // Largest |x| compared as integers (non-negative floats order like their bit patterns),
    // which vectorizes; then the first element that has it gives the sign.
    uint32_t bits[QK_K];
    std::memcpy(bits, x, sizeof(bits));
    int32_t amax_bits = 0;
    for (int l = 0; l < QK_K; ++l) {
      const int32_t ab = static_cast<int32_t>(bits[l] & 0x7fffffffu);
      amax_bits = ab > amax_bits ? ab : amax_bits;
    }
    float vmax = 0.0f;
    for (int l = 0; l < QK_K && amax_bits != 0; ++l)
      if (static_cast<int32_t>(bits[l] & 0x7fffffffu) == amax_bits) {
        vmax = x[l];
        break;
      }
    const float iscale = q8k_iscale(vmax);
    for (int l = 0; l < QK_K; ++l) b.qs[l] = static_cast<int8_t>(round_half_even_small(iscale * x[l]));
    for (int g = 0; g < QK_K / 16; ++g) {
      int sum = 0;
      for (int l = 16 * g; l < 16 * g + 16; ++l) sum += b.qs[l];
      b.bsums[g] = static_cast<int16_t>(sum);
    }
    b.d = vmax == 0.0f ? 0.0f : 1.0f / iscale;
    x += QK_K;
  }
}

// ---- dot products with a Q8_K activation row ----------------------------------------
// Each super-block's weights are first unpacked to one byte each (0..63), then dotted with the
// activations in groups of 16: plain loops that compilers vectorize for the baseline ISA.
// Integer sums per sub-block are scaled by the integer sub-block scale; the min term
// dmin * m_j * sum(a) and Q6_K's -32 come from Q8_K's bsums. Float once per super-block.

// sum_{l<N} q[l] * a[l]
template <int N>
inline int32_t dot(const uint8_t* q, const int8_t* a) {
  int32_t s = 0;
  for (int l = 0; l < N; ++l) s += static_cast<int16_t>(q[l]) * static_cast<int16_t>(a[l]);
  return s;
}

// Q4_K/Q5_K element 64c + l (l < 32) is the low nibble of qs[32c + l], element 64c + 32 + l the
// high nibble; Q5_K adds bit 2c (resp. 2c+1) of qh[l] as bit 4.
template <bool kFive, typename Block>
inline void unpack_q45(const Block& x, uint8_t* q) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      q[64 * c + l] = x.qs[32 * c + l] & 0xF;
      q[64 * c + 32 + l] = x.qs[32 * c + l] >> 4;
    }
  if constexpr (kFive)
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] |= ((x.qh[l] >> (2 * c)) & 1) << 4;
        q[64 * c + 32 + l] |= ((x.qh[l] >> (2 * c + 1)) & 1) << 4;
      }
}

template <bool kFive, typename Block>
float vec_dot_q45_K(int64_t n, const void* w, const void* a) {
  const auto* wb = static_cast<const Block*>(w);
  const auto* ab = static_cast<const block_q8_K*>(a);
  float sum = 0.0f;
  alignas(16) uint8_t q[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const Block& x = wb[i];
    const block_q8_K& y = ab[i];
    const ScalesMins sm = unpack_scales_mins(x.scales);
    unpack_q45<kFive>(x, q);
    int32_t sum_mins = 0, sum_q = 0;
    for (int j = 0; j < 8; ++j) {
      sum_mins += sm.m[j] * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
      sum_q += sm.sc[j] * dot<32>(q + 32 * j, y.qs + 32 * j);
    }
    sum += y.d * (fp16_to_fp32(x.d) * sum_q - fp16_to_fp32(x.dmin) * sum_mins);
  }
  return sum;
}

float vec_dot_q4_K(int64_t n, const void* w, const void* a) { return vec_dot_q45_K<false, block_q4_K>(n, w, a); }
float vec_dot_q5_K(int64_t n, const void* w, const void* a) { return vec_dot_q45_K<true, block_q5_K>(n, w, a); }

// Q6_K: sum_e scale * (q - 32) * a = sum_g scale_g * (sum q*a - 32 * bsum_g).
float vec_dot_q6_K(int64_t n, const void* w, const void* a) {
  const auto* wb = static_cast<const block_q6_K*>(w);
  const auto* ab = static_cast<const block_q8_K*>(a);
  float sum = 0.0f;
  alignas(16) uint8_t q[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q6_K& x = wb[i];
    const block_q8_K& y = ab[i];
    unpack_q6(x, q);
    int32_t sum_q = 0;
    for (int g = 0; g < 16; ++g) sum_q += x.scales[g] * (dot<16>(q + 16 * g, y.qs + 16 * g) - 32 * y.bsums[g]);
    sum += y.d * fp16_to_fp32(x.d) * sum_q;
  }
  return sum;
}

}  // namespace

void fill_kquants_kernels(CpuKernels& k) {
  auto& q4 = k.types[static_cast<int>(GgmlType::Q4_K)];
  q4.dequantize_row = dequantize_row_q4_K;
  q4.vec_dot = vec_dot_q4_K;
  auto& q5 = k.types[static_cast<int>(GgmlType::Q5_K)];
  q5.dequantize_row = dequantize_row_q5_K;
  q5.vec_dot = vec_dot_q5_K;
  auto& q6 = k.types[static_cast<int>(GgmlType::Q6_K)];
  q6.dequantize_row = dequantize_row_q6_K;
  q6.vec_dot = vec_dot_q6_K;
  auto& q8 = k.types[static_cast<int>(GgmlType::Q8_K)];
  q8.dequantize_row = dequantize_row_q8_K;
  q8.quantize_row = quantize_row_q8_K;
}

}  // namespace pyresa::cpu::scalar
