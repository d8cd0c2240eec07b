// Legacy ggml formats and the float helpers with AVX-512 (F, BW, VL, DQ) and VNNI.
//
// Quantized dots take two blocks per 512-bit register: 64 unsigned weight bytes u (nibbles,
// plus the fifth bit for Q5 from a 64-bit mask register) against the two blocks' 64 signed
// activation bytes, multiplied and summed in groups of four into 16 int32 by one vpdpbusd
// (exact: no 16-bit intermediate to saturate). The symmetric formats' offset (q - 8, q - 16,
// and the +128 bias that makes Q8_0 weights unsigned) is one more vpdpbusd of the offset with
// the activations, subtracted. The int32 lanes are converted and accumulated with one FMA by
// a vector holding each block's d_w * d_a in its 8 lanes. The fp16 scales of four blocks are
// picked out of the loaded blocks with one word permute and converted together.

// GCC 12's AVX-512 headers start many intrinsics from _mm512_undefined_*(), which
// -W(maybe-)uninitialized reports once inlined (GCC bug 105593); the code is fine.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/legacy_common.h"
#include "formats/fp16.h"

namespace pyresa::cpu::avx512 {

namespace {

inline float h2f(fp16_t h) { return _cvtsh_ss(h); }

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline __mmask16 tail_mask(int64_t rem) { return (__mmask16)((1u << rem) - 1u); }

// ---- building the 64-byte operands of a block pair --------------------------------------

// The packed nibbles of two blocks -> 64 bytes: [lo(b0), hi(b0), lo(b1), hi(b1)], i.e. bytes
// 0..31 are the 32 elements of the first block in order, 32..63 those of the second.
inline __m512i unpack_nibbles2(const uint8_t* qs0, const uint8_t* qs1) {
  const __m256i v0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs0)));
  const __m256i v1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs1)));
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1);
  const __m512i shifted = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
  return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f));
}

// Adds 16 to the bytes whose fifth bit is set: bit j of qh0 for byte j, of qh1 for byte 32 + j.
inline __m512i add_fifth_bits2(__m512i u, const uint8_t* qh0, const uint8_t* qh1) {
  const __mmask64 k = _cvtu64_mask64((uint64_t)load_u32(qh0) | (uint64_t)load_u32(qh1) << 32);
  return _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(16));
}

inline __m512i load_pair(const int8_t* a0, const int8_t* a1) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1)), 1);
}

inline __m512i dot_u8_i8(__m512i u, __m512i a) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a); }
// sum of (u - offset) * a per group of four
inline __m512i dot_u8_i8_offset(__m512i u, __m512i a, __m512i offset) {
  return _mm512_sub_epi32(dot_u8_i8(u, a), dot_u8_i8(offset, a));
}

// ---- per-pair integer dots: 16 int32 lanes, 8 per block ---------------------------------

struct Q4_0 {
  using W = block_q4_0;
  using A = block_q8_0;
  static __m512i isum2(const W& w0, const W& w1, const A& a0, const A& a1) {
    return dot_u8_i8_offset(unpack_nibbles2(w0.qs, w1.qs), load_pair(a0.qs, a1.qs), _mm512_set1_epi8(8));
  }
};
struct Q4_1 {
  using W = block_q4_1;
  using A = block_q8_1;
  // The weight side alone, for kernels that reuse it across activation rows.
  static __m512i unpack2(const W& w0, const W& w1) { return unpack_nibbles2(w0.qs, w1.qs); }
  static __m512i isum_unpacked(__m512i u, const A& a0, const A& a1) { return dot_u8_i8(u, load_pair(a0.qs, a1.qs)); }
};
struct Q5_0 {
  using W = block_q5_0;
  using A = block_q8_0;
  static __m512i isum2(const W& w0, const W& w1, const A& a0, const A& a1) {
    const __m512i u = add_fifth_bits2(unpack_nibbles2(w0.qs, w1.qs), w0.qh, w1.qh);
    return dot_u8_i8_offset(u, load_pair(a0.qs, a1.qs), _mm512_set1_epi8(16));
  }
};
struct Q5_1 {
  using W = block_q5_1;
  using A = block_q8_1;
  static __m512i unpack2(const W& w0, const W& w1) {
    return add_fifth_bits2(unpack_nibbles2(w0.qs, w1.qs), w0.qh, w1.qh);
  }
  static __m512i isum_unpacked(__m512i u, const A& a0, const A& a1) { return dot_u8_i8(u, load_pair(a0.qs, a1.qs)); }
};
struct Q8_0 {
  using W = block_q8_0;
  using A = block_q8_0;
  // signed weights made unsigned by w + 128 (flipping the top bit), 128 * sum(a) taken off
  static __m512i isum2(const W& w0, const W& w1, const A& a0, const A& a1) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const __m512i u = _mm512_xor_si512(load_pair(w0.qs, w1.qs), bias);
    return dot_u8_i8_offset(u, load_pair(a0.qs, a1.qs), bias);
  }
};

// ---- fp16 block fields ----------------------------------------------------------------

// The first NF fp16 fields (d; or d and m / d and s) of NB consecutive blocks of STRIDE bytes
// at p, in order, as the low NB * NF words: one or two loads and one word permute. Only the
// bytes of those NB blocks are read (masked loads past them), so rows may end anywhere.
template <int STRIDE, int NF, int NB>
struct FieldIndex {  // word k * NF + f of the result = word f of block k
  alignas(64) int16_t w[32] = {};
  constexpr FieldIndex() {
    for (int k = 0; k < NB; ++k)
      for (int f = 0; f < NF; ++f) w[k * NF + f] = (int16_t)(k * (STRIDE / 2) + f);
  }
};

template <int STRIDE, int NF, int NB>
inline __m128i fields(const void* p) {
  static_assert(STRIDE % 2 == 0, "blocks of whole words");
  constexpr int kWords = NB * STRIDE / 2;                   // words spanned by the NB blocks
  constexpr int kLast = (NB - 1) * (STRIDE / 2) + NF - 1;  // last word needed
  static constexpr FieldIndex<STRIDE, NF, NB> index;
  const __m512i idx = _mm512_load_si512(index.w);
  const auto words = [](int count) { return count >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << count) - 1); };
  const __m512i t0 = _mm512_maskz_loadu_epi16(words(kWords), p);
  if constexpr (kLast < 32) {
    return _mm512_castsi512_si128(_mm512_permutexvar_epi16(idx, t0));
  } else {
    const __m512i t1 = _mm512_maskz_loadu_epi16(words(kWords - 32), static_cast<const uint8_t*>(p) + 64);
    return _mm512_castsi512_si128(_mm512_permutex2var_epi16(t0, idx, t1));
  }
}

// [s_K0 x 8, s_K1 x 8] from a vector of per-block scales
template <int K0, int K1>
inline __m512 expand_pair(__m512 s) {
  const __m512i idx = _mm512_setr_epi32(K0, K0, K0, K0, K0, K0, K0, K0, K1, K1, K1, K1, K1, K1, K1, K1);
  return _mm512_permutexvar_ps(idx, s);
}

inline __m512 fma_isum(__m512i isum, __m512 scale, __m512 acc) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc);
}

// Formats without a minimum: sum_b d_w d_a isum_b. Four blocks per iteration (two pairs, two
// accumulators), then a pair, then a single block paired with itself at scale 0.
template <class F>
float dot_symmetric(int64_t n, const void* wv, const void* av) {
  using W = typename F::W;
  using A = typename F::A;
  const auto* w = static_cast<const W*>(wv);
  const auto* a = static_cast<const A*>(av);
  const int64_t nb = n / 32;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m128 s4 = _mm_mul_ps(_mm_cvtph_ps(fields<sizeof(W), 1, 4>(&w[b])), _mm_cvtph_ps(fields<sizeof(A), 1, 4>(&a[b])));
    const __m512 s = _mm512_castps128_ps512(s4);
    acc0 = fma_isum(F::isum2(w[b], w[b + 1], a[b], a[b + 1]), expand_pair<0, 1>(s), acc0);
    acc1 = fma_isum(F::isum2(w[b + 2], w[b + 3], a[b + 2], a[b + 3]), expand_pair<2, 3>(s), acc1);
  }
  if (b + 2 <= nb) {
    const __m128 s2 = _mm_mul_ps(_mm_cvtph_ps(fields<sizeof(W), 1, 2>(&w[b])), _mm_cvtph_ps(fields<sizeof(A), 1, 2>(&a[b])));
    acc0 = fma_isum(F::isum2(w[b], w[b + 1], a[b], a[b + 1]), expand_pair<0, 1>(_mm512_castps128_ps512(s2)), acc0);
    b += 2;
  }
  if (b < nb) {
    const __m512 s = _mm512_maskz_mov_ps(0x00ff, _mm512_set1_ps(h2f(w[b].d) * h2f(a[b].d)));
    acc1 = fma_isum(F::isum2(w[b], w[b], a[b], a[b]), s, acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// Formats with a minimum m against Q8_1 (d, s = d * sum a): sum_b d_w d_a isum_b + m_b s_b,
// for R activation rows against one weight row. Each weight block pair is unpacked (nibbles, fifth
// bits, fp16 d and m) once for the R rows. vec_dot is R = 1 and the multi-row path runs the same
// per-row float operations in the same order, so a batched prefill or rectification computes
// bit for bit the numbers of decode steps.
template <class F, int R>
void dot_with_min_group(int64_t n, const void* wv, const uint8_t* acts, size_t act_stride, float* out,
                        size_t out_stride) {
  using W = typename F::W;
  using A = typename F::A;
  const auto* w = static_cast<const W*>(wv);
  const A* a[R];
  for (int j = 0; j < R; ++j) a[j] = reinterpret_cast<const A*>(acts + j * act_stride);
  const int64_t nb = n / 32;
  __m512 acc0[R], acc1[R];
  __m256 acc_m[R];
  for (int j = 0; j < R; ++j) {
    acc0[j] = acc1[j] = _mm512_setzero_ps();
    acc_m[j] = _mm256_setzero_ps();
  }
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    // [d0 m0 d1 m1 d2 m2 d3 m3] * [da0 s0 da1 s1 ...] = [scale0, m0 s0, scale1, m1 s1, ...]
    const __m256 wdm = _mm256_cvtph_ps(fields<sizeof(W), 2, 4>(&w[b]));
    const __m512i u01 = F::unpack2(w[b], w[b + 1]), u23 = F::unpack2(w[b + 2], w[b + 3]);
    for (int j = 0; j < R; ++j) {
      const __m256 p = _mm256_mul_ps(wdm, _mm256_cvtph_ps(fields<sizeof(A), 2, 4>(&a[j][b])));
      acc_m[j] = _mm256_add_ps(acc_m[j], p);
      const __m512 s = _mm512_castps256_ps512(p);
      acc0[j] = fma_isum(F::isum_unpacked(u01, a[j][b], a[j][b + 1]), expand_pair<0, 2>(s), acc0[j]);
      acc1[j] = fma_isum(F::isum_unpacked(u23, a[j][b + 2], a[j][b + 3]), expand_pair<4, 6>(s), acc1[j]);
    }
  }
  if (b + 2 <= nb) {
    const __m128 wdm = _mm_cvtph_ps(fields<sizeof(W), 2, 2>(&w[b]));
    const __m512i u01 = F::unpack2(w[b], w[b + 1]);
    for (int j = 0; j < R; ++j) {
      const __m128 p = _mm_mul_ps(wdm, _mm_cvtph_ps(fields<sizeof(A), 2, 2>(&a[j][b])));
      acc_m[j] = _mm256_add_ps(acc_m[j], _mm256_zextps128_ps256(p));
      acc0[j] = fma_isum(F::isum_unpacked(u01, a[j][b], a[j][b + 1]), expand_pair<0, 2>(_mm512_castps128_ps512(p)), acc0[j]);
    }
    b += 2;
  }
  if (b < nb) {
    // fields<.., 1> fills the words past the block's two with its first (d), so lanes 2 and 3
    // hold d_w d_a: keep [scale, m s] only, or lane 3 would add d_w d_a to the m s sum.
    const __m128 wdm = _mm_cvtph_ps(fields<sizeof(W), 2, 1>(&w[b]));
    const __m512i u = F::unpack2(w[b], w[b]);
    for (int j = 0; j < R; ++j) {
      const __m128 p = _mm_maskz_mov_ps(0x3, _mm_mul_ps(wdm, _mm_cvtph_ps(fields<sizeof(A), 2, 1>(&a[j][b]))));
      acc_m[j] = _mm256_add_ps(acc_m[j], _mm256_zextps128_ps256(p));
      const __m512 s = _mm512_maskz_permutexvar_ps(0x00ff, _mm512_setzero_si512(), _mm512_castps128_ps512(p));
      acc1[j] = fma_isum(F::isum_unpacked(u, a[j][b], a[j][b]), s, acc1[j]);
    }
  }
  for (int j = 0; j < R; ++j) {
    const __m256 ms = _mm256_maskz_mov_ps(0xaa, acc_m[j]);  // the m * s lanes
    out[j * out_stride] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0[j], acc1[j]), _mm512_zextps256_ps512(ms)));
  }
}

template <class F>
float dot_with_min(int64_t n, const void* w, const void* a) {
  float out;
  dot_with_min_group<F, 1>(n, w, static_cast<const uint8_t*>(a), 0, &out, 0);
  return out;
}

// Four activation rows per weight-row pass: 8 accumulators and the weight pair in registers.
template <class F>
void dot_with_min_rows(int64_t n, const void* w, const void* acts, size_t act_stride, int n_acts, float* out,
                       size_t out_stride) {
  const auto* act = static_cast<const uint8_t*>(acts);
  int i = 0;
  for (; i + 4 <= n_acts; i += 4)
    dot_with_min_group<F, 4>(n, w, act + i * act_stride, act_stride, out + i * out_stride, out_stride);
  const uint8_t* rest = act + i * act_stride;
  float* rest_out = out + i * out_stride;
  switch (n_acts - i) {
    case 3: dot_with_min_group<F, 3>(n, w, rest, act_stride, rest_out, out_stride); break;
    case 2: dot_with_min_group<F, 2>(n, w, rest, act_stride, rest_out, out_stride); break;
    case 1: dot_with_min_group<F, 1>(n, w, rest, act_stride, rest_out, out_stride); break;
    default: break;
  }
}

// ---- dequantization -----------------------------------------------------------------------

// 16 signed bytes -> 16 floats d * q (+ m): one multiply and one add, as gguf computes it.
inline void store16(__m128i q, __m512 d, float* dst) {
  _mm512_storeu_ps(dst, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))));
}
inline void store16(__m128i q, __m512 d, __m512 m, float* dst) {
  _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q))), m));
}
inline void nibbles(const uint8_t* qs, __m128i* lo, __m128i* hi) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  *lo = _mm_and_si128(v, _mm_set1_epi8(0x0f));
  *hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0f));
}
// elements 0..15 get bit j of qh, 16..31 bit 16 + j
inline void fifth_bits(const uint8_t* qh, __m128i* lo, __m128i* hi) {
  const uint32_t bits = load_u32(qh);
  const __m128i c16 = _mm_set1_epi8(16);
  *lo = _mm_mask_add_epi8(*lo, (__mmask16)(bits & 0xffff), *lo, c16);
  *hi = _mm_mask_add_epi8(*hi, (__mmask16)(bits >> 16), *hi, c16);
}

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q4_0*>(src);
  const __m128i c8 = _mm_set1_epi8(8);
  for (int64_t b = 0; b < n / 32; ++b, dst += 32) {
    __m128i lo, hi;
    nibbles(x[b].qs, &lo, &hi);
    const __m512 d = _mm512_set1_ps(h2f(x[b].d));
    store16(_mm_sub_epi8(lo, c8), d, dst);
    store16(_mm_sub_epi8(hi, c8), d, dst + 16);
  }
}
void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q4_1*>(src);
  for (int64_t b = 0; b < n / 32; ++b, dst += 32) {
    __m128i lo, hi;
    nibbles(x[b].qs, &lo, &hi);
    const __m512 d = _mm512_set1_ps(h2f(x[b].d)), m = _mm512_set1_ps(h2f(x[b].m));
    store16(lo, d, m, dst);
    store16(hi, d, m, dst + 16);
  }
}
void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q5_0*>(src);
  const __m128i c16 = _mm_set1_epi8(16);
  for (int64_t b = 0; b < n / 32; ++b, dst += 32) {
    __m128i lo, hi;
    nibbles(x[b].qs, &lo, &hi);
    fifth_bits(x[b].qh, &lo, &hi);
    const __m512 d = _mm512_set1_ps(h2f(x[b].d));
    store16(_mm_sub_epi8(lo, c16), d, dst);
    store16(_mm_sub_epi8(hi, c16), d, dst + 16);
  }
}
void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q5_1*>(src);
  for (int64_t b = 0; b < n / 32; ++b, dst += 32) {
    __m128i lo, hi;
    nibbles(x[b].qs, &lo, &hi);
    fifth_bits(x[b].qh, &lo, &hi);
    const __m512 d = _mm512_set1_ps(h2f(x[b].d)), m = _mm512_set1_ps(h2f(x[b].m));
    store16(lo, d, m, dst);
    store16(hi, d, m, dst + 16);
  }
}
template <class B>
void dequantize_q8(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const B*>(src);
  for (int64_t b = 0; b < n / 32; ++b, dst += 32) {
    const __m512 d = _mm512_set1_ps(h2f(x[b].d));
    store16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs)), d, dst);
    store16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs + 16)), d, dst + 16);
  }
}

// ---- activation quantizers ----------------------------------------------------------------

// One block of 32 floats -> d and 32 int8 (round half to even, as the other kernel sets);
// returns the sum of the quants (for Q8_1).
inline int quantize_block(const float* x, fp16_t* d, int8_t* qs, float* d_unrounded = nullptr) {
  const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  if (d_unrounded) *d_unrounded = amax / 127.0f;
  const __m512 inv = _mm512_set1_ps(legacy::q8_block_scale(amax, d));
  const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
  const __m512i i0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), nlim), lim);
  const __m512i i1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv)), nlim), lim);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm512_cvtepi32_epi8(i0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 16), _mm512_cvtepi32_epi8(i1));
  return _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
}

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q8_0*>(dst);
  for (int64_t b = 0; b < n / 32; ++b) quantize_block(src + 32 * b, &y[b].d, y[b].qs);
}

void quantize_q8_1(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q8_1*>(dst);
  for (int64_t b = 0; b < n / 32; ++b) {
    float d = 0.0f;
    const int sum = quantize_block(src + 32 * b, &y[b].d, y[b].qs, &d);
    y[b].s = fp32_to_fp16(d * (float)sum);  // the unrounded d, as ggml computes s
  }
}

// ---- float rows -----------------------------------------------------------------------

// 16 elements -> floats; the masked forms read only the lanes in k (no over-read at row ends).
struct F16Row {
  using T = fp16_t;
  static __m512 load(const fp16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const fp16_t* p, __mmask16 k) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }
};
struct BF16Row {
  using T = bf16_t;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 load(const bf16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const bf16_t* p, __mmask16 k) { return widen(_mm256_maskz_loadu_epi16(k, p)); }
};

// sum_i w_i a_i, four accumulators (64 elements per iteration), masked tail.
template <class R>
float dot_float(const typename R::T* w, const float* a, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps(R::load(w + i), _mm512_loadu_ps(a + i), acc0);
    acc1 = _mm512_fmadd_ps(R::load(w + i + 16), _mm512_loadu_ps(a + i + 16), acc1);
    acc2 = _mm512_fmadd_ps(R::load(w + i + 32), _mm512_loadu_ps(a + i + 32), acc2);
    acc3 = _mm512_fmadd_ps(R::load(w + i + 48), _mm512_loadu_ps(a + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(R::load(w + i), _mm512_loadu_ps(a + i), acc0);
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    acc1 = _mm512_fmadd_ps(R::load(w + i, k), _mm512_maskz_loadu_ps(k, a + i), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

// F32 weights with 256-bit loads: GGUF aligns tensors to 32 bytes, and a 64-byte load that
// splits two cache lines costs enough that 512-bit loads streamed F32 rows at 3/4 of the speed
// of 256-bit ones (aligning the weight pointer only moved the splits to the activation).
float dot_f32(int64_t n, const void* wv, const void* av) {
  const float* w = static_cast<const float*>(wv);
  const float* a = static_cast<const float*>(av);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(a + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(a + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(a + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(a + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(a + i), acc0);
  if (i < n) {
    const __mmask8 k = (__mmask8)((1u << (n - i)) - 1u);
    acc1 = _mm256_fmadd_ps(_mm256_maskz_loadu_ps(k, w + i), _mm256_maskz_loadu_ps(k, a + i), acc1);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
float dot_f16(int64_t n, const void* w, const void* a) {
  return dot_float<F16Row>(static_cast<const fp16_t*>(w), static_cast<const float*>(a), n);
}
float dot_bf16(int64_t n, const void* w, const void* a) {
  return dot_float<BF16Row>(static_cast<const bf16_t*>(w), static_cast<const float*>(a), n);
}

template <class R>
void widen_row(const typename R::T* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, R::load(src + i));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, k, R::load(src + i, k));
  }
}

void copy_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void quantize_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void dequantize_f16(const void* src, float* dst, int64_t n) { widen_row<F16Row>(static_cast<const fp16_t*>(src), dst, n); }
void dequantize_bf16(const void* src, float* dst, int64_t n) { widen_row<BF16Row>(static_cast<const bf16_t*>(src), dst, n); }

void fp16_to_fp32_row(const fp16_t* src, float* dst, int n) { widen_row<F16Row>(src, dst, n); }

void fp32_to_fp16_row(const float* src, fp16_t* dst, int n) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRne));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm256_mask_storeu_epi16(dst + i, k, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, src + i), kRne));
  }
}

float dot_f32_f16(const float* a, const fp16_t* b, int n) { return dot_float<F16Row>(b, a, n); }

void axpy_f16(float alpha, const fp16_t* x, float* y, int n) {
  const __m512 va = _mm512_set1_ps(alpha);
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, F16Row::load(x + i), _mm512_loadu_ps(y + i)));
    _mm512_storeu_ps(y + i + 16, _mm512_fmadd_ps(va, F16Row::load(x + i + 16), _mm512_loadu_ps(y + i + 16)));
  }
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, F16Row::load(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, F16Row::load(x + i, k), _mm512_maskz_loadu_ps(k, y + i)));
  }
}

}  // namespace

void fill_legacy_kernels(CpuKernels& k) {
  auto& f32 = k.types[(int)GgmlType::F32];
  f32.dequantize_row = copy_f32;
  f32.quantize_row = quantize_f32;
  f32.vec_dot = dot_f32;

  auto& f16 = k.types[(int)GgmlType::F16];
  f16.dequantize_row = dequantize_f16;
  f16.vec_dot = dot_f16;

  auto& bf16 = k.types[(int)GgmlType::BF16];
  bf16.dequantize_row = dequantize_bf16;
  bf16.vec_dot = dot_bf16;

  auto& q4_0 = k.types[(int)GgmlType::Q4_0];
  q4_0.dequantize_row = dequantize_q4_0;
  q4_0.vec_dot = dot_symmetric<Q4_0>;

  auto& q4_1 = k.types[(int)GgmlType::Q4_1];
  q4_1.dequantize_row = dequantize_q4_1;
  q4_1.vec_dot = dot_with_min<Q4_1>;
  q4_1.vec_dot_rows = dot_with_min_rows<Q4_1>;

  auto& q5_0 = k.types[(int)GgmlType::Q5_0];
  q5_0.dequantize_row = dequantize_q5_0;
  q5_0.vec_dot = dot_symmetric<Q5_0>;

  auto& q5_1 = k.types[(int)GgmlType::Q5_1];
  q5_1.dequantize_row = dequantize_q5_1;
  q5_1.vec_dot = dot_with_min<Q5_1>;
  q5_1.vec_dot_rows = dot_with_min_rows<Q5_1>;

  auto& q8_0 = k.types[(int)GgmlType::Q8_0];
  q8_0.dequantize_row = dequantize_q8<block_q8_0>;
  q8_0.quantize_row = quantize_q8_0;
  q8_0.vec_dot = dot_symmetric<Q8_0>;

  auto& q8_1 = k.types[(int)GgmlType::Q8_1];
  q8_1.quantize_row = quantize_q8_1;
  q8_1.dequantize_row = dequantize_q8<block_q8_1>;

  k.dot_f32_f16 = dot_f32_f16;
  k.axpy_f16 = axpy_f16;
  k.fp32_to_fp16_row = fp32_to_fp16_row;
  k.fp16_to_fp32_row = fp16_to_fp32_row;
}

}  // namespace pyresa::cpu::avx512
