// Legacy ggml formats and the float helpers with AVX2 + FMA + F16C.
//
// Quantized dots: a block's 32 weights are widened to 32 unsigned bytes u (nibbles, plus the
// fifth bit for Q5), multiplied with the 32 signed activation bytes by vpmaddubsw (pairs summed
// to int16, no saturation possible: |u| <= 31, |a| <= 127), summed to 8 int32 by vpmaddwd,
// converted to float and accumulated with one FMA by the block's scale d_w * d_a. The offset
// of the symmetric formats (q - 8, q - 16) is taken off in int16 as offset * (pair sums of a),
// one more vpmaddubsw. Float accumulators stay in registers; one horizontal sum per call.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/legacy_common.h"
#include "formats/fp16.h"

namespace pyresa::cpu::avx2 {

namespace {

inline float h2f(fp16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The two fp16 fields at p (d and m, or d and s) as floats in lanes 0 and 1; lanes 2, 3 are 0.
inline __m128 load_two_halves(const void* p) { return _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(p))); }

// 16 bytes of packed nibbles -> 32 bytes: byte j = low nibble of qs[j], byte j+16 = high nibble.
// The 16 bytes go to both 128-bit lanes (a load, no shuffle) and the upper lane is shifted.
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  const __m256i shifted = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
}

// 32 bits (bit j = fifth bit of element j) -> 32 bytes of 0x10 or 0.
inline __m256i expand_fifth_bits(const uint8_t* qh) {
  const __m256i v = _mm256_set1_epi32((int)load_u32(qh));
  // byte j takes byte j / 8 of qh, then tests its bit j % 8
  const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

inline __m256i load32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// sum over pairs of u * a (u unsigned, a signed) -> 8 int32 lanes
inline __m256i dot_u8_i8(__m256i u, __m256i a) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
}
// sum of (u - offset) * a, offset in 1..31
inline __m256i dot_u8_i8_offset(__m256i u, __m256i a, __m256i offset) {
  const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, a), _mm256_maddubs_epi16(offset, a));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
// signed * signed: |w| * (a with w's sign); |-128| reads as unsigned 128, still exact
inline __m256i dot_i8_i8(__m256i w, __m256i a) {
  return dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

// ---- per-block integer dots, as 8 int32 lanes -------------------------------------------

struct Q4_0 {
  using W = block_q4_0;
  using A = block_q8_0;
  static __m256i isum(const W& w, const A& a) {
    return dot_u8_i8_offset(unpack_nibbles(w.qs), load32(a.qs), _mm256_set1_epi8(8));
  }
};
struct Q4_1 {
  using W = block_q4_1;
  using A = block_q8_1;
  static __m256i isum(const W& w, const A& a) { return dot_u8_i8(unpack_nibbles(w.qs), load32(a.qs)); }
};
struct Q5_0 {
  using W = block_q5_0;
  using A = block_q8_0;
  static __m256i isum(const W& w, const A& a) {
    const __m256i u = _mm256_or_si256(unpack_nibbles(w.qs), expand_fifth_bits(w.qh));
    return dot_u8_i8_offset(u, load32(a.qs), _mm256_set1_epi8(16));
  }
};
struct Q5_1 {
  using W = block_q5_1;
  using A = block_q8_1;
  static __m256i isum(const W& w, const A& a) {
    const __m256i u = _mm256_or_si256(unpack_nibbles(w.qs), expand_fifth_bits(w.qh));
    return dot_u8_i8(u, load32(a.qs));
  }
};
struct Q8_0 {
  using W = block_q8_0;
  using A = block_q8_0;
  static __m256i isum(const W& w, const A& a) { return dot_i8_i8(load32(w.qs), load32(a.qs)); }
};

// The fp16 scales of four consecutive blocks (field at p, blocks `stride` bytes apart) as
// four floats: four 32-bit loads interleaved by three unpacks, one conversion.
inline __m128i load32_at(const uint8_t* p) { return _mm_cvtsi32_si128((int)load_u32(p)); }
inline __m128 scales4(const uint8_t* p, size_t stride) {
  const __m128i d01 = _mm_unpacklo_epi16(load32_at(p), load32_at(p + stride));
  const __m128i d23 = _mm_unpacklo_epi16(load32_at(p + 2 * stride), load32_at(p + 3 * stride));
  return _mm_cvtph_ps(_mm_unpacklo_epi32(d01, d23));
}
// The fp16 pairs (d, m) or (d, s) of four consecutive blocks as [d0 m0 d1 m1 d2 m2 d3 m3].
inline __m256 pairs4(const uint8_t* p, size_t stride) {
  const __m128i p01 = _mm_unpacklo_epi32(load32_at(p), load32_at(p + stride));
  const __m128i p23 = _mm_unpacklo_epi32(load32_at(p + 2 * stride), load32_at(p + 3 * stride));
  return _mm256_cvtph_ps(_mm_unpacklo_epi64(p01, p23));
}
template <int K>
inline __m256 lane(__m256 v) {
  if (K == 0) return _mm256_broadcastss_ps(_mm256_castps256_ps128(v));
  return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(K));
}
template <int K>
inline __m256 lane(__m128 v) { return lane<K>(_mm256_castps128_ps256(v)); }

template <class F>
inline __m256 block_dot(const typename F::W& w, const typename F::A& a, __m256 scale, __m256 acc) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(F::isum(w, a)), scale, acc);
}

// Formats without a minimum: sum_b d_w d_a isum_b. Four blocks per iteration, their scales
// converted together; two accumulators.
template <class F>
float dot_symmetric(int64_t n, const void* wv, const void* av) {
  using W = typename F::W;
  using A = typename F::A;
  const auto* w = static_cast<const W*>(wv);
  const auto* a = static_cast<const A*>(av);
  const int64_t nb = n / 32;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m128 s = _mm_mul_ps(scales4(reinterpret_cast<const uint8_t*>(&w[b].d), sizeof(W)),
                                scales4(reinterpret_cast<const uint8_t*>(&a[b].d), sizeof(A)));
    acc0 = block_dot<F>(w[b], a[b], lane<0>(s), acc0);
    acc1 = block_dot<F>(w[b + 1], a[b + 1], lane<1>(s), acc1);
    acc0 = block_dot<F>(w[b + 2], a[b + 2], lane<2>(s), acc0);
    acc1 = block_dot<F>(w[b + 3], a[b + 3], lane<3>(s), acc1);
  }
  for (; b < nb; ++b) acc0 = block_dot<F>(w[b], a[b], _mm256_set1_ps(h2f(w[b].d) * h2f(a[b].d)), acc0);
  return hsum(_mm256_add_ps(acc0, acc1));
}

// Formats with a minimum m against Q8_1 (d, s = d * sum a): sum_b d_w d_a isum_b + m_b s_b.
template <class F>
float dot_with_min(int64_t n, const void* wv, const void* av) {
  using W = typename F::W;
  using A = typename F::A;
  const auto* w = static_cast<const W*>(wv);
  const auto* a = static_cast<const A*>(av);
  const int64_t nb = n / 32;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc_m = _mm256_setzero_ps();  // odd lanes collect m * s
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m256 p = _mm256_mul_ps(pairs4(reinterpret_cast<const uint8_t*>(&w[b].d), sizeof(W)),
                                   pairs4(reinterpret_cast<const uint8_t*>(&a[b].d), sizeof(A)));
    acc_m = _mm256_add_ps(acc_m, p);
    acc0 = block_dot<F>(w[b], a[b], lane<0>(p), acc0);
    acc1 = block_dot<F>(w[b + 1], a[b + 1], lane<2>(p), acc1);
    acc0 = block_dot<F>(w[b + 2], a[b + 2], lane<4>(p), acc0);
    acc1 = block_dot<F>(w[b + 3], a[b + 3], lane<6>(p), acc1);
  }
  // odd lanes only: multiply the even ones (the d products) by 0 before the final sum
  const __m256 odd = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
  float sum_m = hsum(_mm256_and_ps(acc_m, odd));
  for (; b < nb; ++b) {
    const __m128 p = _mm_mul_ps(load_two_halves(&w[b].d), load_two_halves(&a[b].d));  // [d*da, m*s, 0, 0]
    sum_m += _mm_cvtss_f32(_mm_movehdup_ps(p));
    acc0 = block_dot<F>(w[b], a[b], _mm256_broadcastss_ps(p), acc0);
  }
  return hsum(_mm256_add_ps(acc0, acc1)) + sum_m;
}

// ---- dequantization -----------------------------------------------------------------------

// 32 signed bytes -> 32 floats d * q (+ m): one multiply and one add, as gguf computes it.
inline void store_block(__m256i q, __m256 d, float* dst) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k)
    _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]))));
}
inline void store_block(__m256i q, __m256 d, __m256 m, float* dst) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k) {
    const __m256 x = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k])));
    _mm256_storeu_ps(dst + 8 * k, _mm256_add_ps(x, m));
  }
}

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q4_0*>(src);
  for (int64_t b = 0; b < n / 32; ++b)
    store_block(_mm256_sub_epi8(unpack_nibbles(x[b].qs), _mm256_set1_epi8(8)), _mm256_set1_ps(h2f(x[b].d)), dst + 32 * b);
}
void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q4_1*>(src);
  for (int64_t b = 0; b < n / 32; ++b)
    store_block(unpack_nibbles(x[b].qs), _mm256_set1_ps(h2f(x[b].d)), _mm256_set1_ps(h2f(x[b].m)), dst + 32 * b);
}
void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q5_0*>(src);
  for (int64_t b = 0; b < n / 32; ++b) {
    const __m256i u = _mm256_or_si256(unpack_nibbles(x[b].qs), expand_fifth_bits(x[b].qh));
    store_block(_mm256_sub_epi8(u, _mm256_set1_epi8(16)), _mm256_set1_ps(h2f(x[b].d)), dst + 32 * b);
  }
}
void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q5_1*>(src);
  for (int64_t b = 0; b < n / 32; ++b) {
    const __m256i u = _mm256_or_si256(unpack_nibbles(x[b].qs), expand_fifth_bits(x[b].qh));
    store_block(u, _mm256_set1_ps(h2f(x[b].d)), _mm256_set1_ps(h2f(x[b].m)), dst + 32 * b);
  }
}
void dequantize_q8_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q8_0*>(src);
  for (int64_t b = 0; b < n / 32; ++b) store_block(load32(x[b].qs), _mm256_set1_ps(h2f(x[b].d)), dst + 32 * b);
}
void dequantize_q8_1(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const block_q8_1*>(src);
  for (int64_t b = 0; b < n / 32; ++b) store_block(load32(x[b].qs), _mm256_set1_ps(h2f(x[b].d)), dst + 32 * b);
}

// ---- activation quantizers ----------------------------------------------------------------

// One block of 32 floats -> d and 32 int8 (round half to even, as the scalar kernels);
// returns the quants as a vector for Q8_1's sum.
inline __m256i quantize_block(const float* x, fp16_t* d, int8_t* qs, float* d_unrounded = nullptr) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 8 * k);
  __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                           _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  if (d_unrounded) *d_unrounded = amax / 127.0f;
  const __m256 inv = _mm256_set1_ps(legacy::q8_block_scale(amax, d));
  __m256i i[4];
  for (int k = 0; k < 4; ++k) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], inv));
  // saturating packs interleave 128-bit lanes; the permute puts elements back in order
  __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
  q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  q = _mm256_max_epi8(q, _mm256_set1_epi8(-127));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), q);
  return q;
}

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q8_0*>(dst);
  for (int64_t b = 0; b < n / 32; ++b) quantize_block(src + 32 * b, &y[b].d, y[b].qs);
}

void quantize_q8_1(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q8_1*>(dst);
  for (int64_t b = 0; b < n / 32; ++b) {
    float d = 0.0f;
    const __m256i q = quantize_block(src + 32 * b, &y[b].d, y[b].qs, &d);
    const int sum = hsum_epi32(dot_u8_i8(_mm256_set1_epi8(1), q));
    y[b].s = fp32_to_fp16(d * (float)sum);  // the unrounded d, as ggml computes s
  }
}

// ---- float rows -----------------------------------------------------------------------

inline __m256 load_f16(const fp16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load_bf16(const bf16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline __m256 load_f32(const float* p) { return _mm256_loadu_ps(p); }
inline float scalar_f16(const fp16_t* p) { return h2f(*p); }
inline float scalar_bf16(const bf16_t* p) { return bf16_to_fp32(*p); }
inline float scalar_f32(const float* p) { return *p; }

// sum_i w_i a_i with w converted by LOAD; four accumulators (32 elements per iteration).
template <class T, __m256 (*LOAD)(const T*), float (*SCALAR)(const T*)>
float dot_float(const T* w, const float* a, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) acc[k] = _mm256_fmadd_ps(LOAD(w + i + 8 * k), _mm256_loadu_ps(a + i + 8 * k), acc[k]);
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(LOAD(w + i), _mm256_loadu_ps(a + i), acc[0]);
  float tail = 0.0f;
  for (; i < n; ++i) tail += SCALAR(w + i) * a[i];
  return hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + tail;
}

float dot_f32(int64_t n, const void* w, const void* a) {
  return dot_float<float, load_f32, scalar_f32>(static_cast<const float*>(w), static_cast<const float*>(a), n);
}
float dot_f16(int64_t n, const void* w, const void* a) {
  return dot_float<fp16_t, load_f16, scalar_f16>(static_cast<const fp16_t*>(w), static_cast<const float*>(a), n);
}
float dot_bf16(int64_t n, const void* w, const void* a) {
  return dot_float<bf16_t, load_bf16, scalar_bf16>(static_cast<const bf16_t*>(w), static_cast<const float*>(a), n);
}

void copy_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void quantize_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void fp16_to_fp32_row(const fp16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16(src + i));
  for (; i < n; ++i) dst[i] = h2f(src[i]);
}
void dequantize_f16(const void* src, float* dst, int64_t n) {
  // rows longer than an int are split; the helper takes int counts
  const auto* s = static_cast<const fp16_t*>(src);
  for (int64_t i = 0; i < n; i += 1 << 30) fp16_to_fp32_row(s + i, dst + i, (int)std::min<int64_t>(n - i, 1 << 30));
}
void dequantize_bf16(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const bf16_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16(s + i));
  for (; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
}

void fp32_to_fp16_row(const float* src, fp16_t* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

float dot_f32_f16(const float* a, const fp16_t* b, int n) { return dot_float<fp16_t, load_f16, scalar_f16>(b, a, n); }

void axpy_f16(float alpha, const fp16_t* x, float* y, int n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16(x + i), _mm256_loadu_ps(y + i)));
    _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, load_f16(x + i + 8), _mm256_loadu_ps(y + i + 8)));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * h2f(x[i]);
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

  auto& q5_0 = k.types[(int)GgmlType::Q5_0];
  q5_0.dequantize_row = dequantize_q5_0;
  q5_0.vec_dot = dot_symmetric<Q5_0>;

  auto& q5_1 = k.types[(int)GgmlType::Q5_1];
  q5_1.dequantize_row = dequantize_q5_1;
  q5_1.vec_dot = dot_with_min<Q5_1>;

  auto& q8_0 = k.types[(int)GgmlType::Q8_0];
  q8_0.dequantize_row = dequantize_q8_0;
  q8_0.quantize_row = quantize_q8_0;
  q8_0.vec_dot = dot_symmetric<Q8_0>;

  auto& q8_1 = k.types[(int)GgmlType::Q8_1];
  q8_1.quantize_row = quantize_q8_1;
  q8_1.dequantize_row = dequantize_q8_1;

  k.dot_f32_f16 = dot_f32_f16;
  k.axpy_f16 = axpy_f16;
  k.fp32_to_fp16_row = fp32_to_fp16_row;
  k.fp16_to_fp32_row = fp16_to_fp32_row;
}

}  // namespace pyresa::cpu::avx2
