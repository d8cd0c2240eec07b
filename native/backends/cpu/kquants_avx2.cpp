// K-quant kernels for AVX2 (+FMA, F16C). The dot products multiply unsigned 4/5/6-bit weights
// by signed 8-bit activations with maddubs (pairs into int16), then madd with the sub-block
// scale (pairs into int32); one int32 vector per super-block is converted to float once.
// Mins (Q4_K/Q5_K) and Q6_K's -32 offset come from Q8_K's bsums instead of per-element work.
//
// int16 stages cannot saturate: maddubs adds two products of at most 63 * 127 each (Q6_K): 16002.
#include <immintrin.h>

#include <type_traits>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/kquants_common.h"

namespace pyresa::cpu::avx2 {

namespace {

inline float h2f(fp16_t h) { return _cvtsh_ss(h); }

// The two adjacent fp16 fields at p (d, dmin) converted together and multiplied by s.
inline __m128 d_dmin_times(const fp16_t* p, float s) {
  int32_t bits;
  std::memcpy(&bits, p, 4);
  return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)), _mm_set1_ps(s));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load64(const void* p) { return _mm_loadl_epi64(static_cast<const __m128i*>(p)); }

// int16 lanes all equal to lane j of v (v holds the same 8 int16 in both 128-bit halves).
template <int j>
inline __m256i broadcast_epi16(__m256i v) {
  return _mm256_shuffle_epi8(v, _mm256_set1_epi16((int16_t)((2 * j + 1) << 8 | (2 * j))));
}

// sum_j m_j * (bsums[2j] + bsums[2j+1]) per int32 lane, for the Q4_K/Q5_K min term.
inline __m256i mins_times_bsums(__m128i sm, const int16_t* bsums) {
  const __m256i mins_dup = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));  // m0 m0 m1 m1 ...
  return _mm256_madd_epi16(load256(bsums), mins_dup);
}

// ---- dot products --------------------------------------------------------------------

// Q4_K and Q5_K share everything but the fifth bit; kFive selects it at compile time.
template <bool kFive, typename Block>
float vec_dot_q45_K(int64_t n, const void* w, const void* a) {
  const auto* wb = static_cast<const Block*>(w);
  const auto* ab = static_cast<const block_q8_K*>(a);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const Block& x = wb[i];
    prefetch_ahead(&x);
    const block_q8_K& y = ab[i];
    const __m128i sm = unpack_scales_mins_sse(x.scales);  // 8 scales, 8 mins
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    const __m256i mins = mins_times_bsums(sm, y.bsums);

    __m256i qh;
    if constexpr (kFive) qh = load256(x.qh);
    __m256i sumi = _mm256_setzero_si256();
    auto chunk = [&](auto c_const) {
      constexpr int c = decltype(c_const)::value;
      const __m256i q = load256(x.qs + 32 * c);
      __m256i lo = _mm256_and_si256(q, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if constexpr (kFive) {  // bits 2c and 2c+1 of qh become bit 4
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
        qh = _mm256_srli_epi16(qh, 2);
      }
      const __m256i p0 = _mm256_maddubs_epi16(lo, load256(y.qs + 64 * c));
      const __m256i p1 = _mm256_maddubs_epi16(hi, load256(y.qs + 64 * c + 32));
      sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(p0, broadcast_epi16<2 * c>(sc)),
                                                     _mm256_madd_epi16(p1, broadcast_epi16<2 * c + 1>(sc))));
    };
    chunk(std::integral_constant<int, 0>{});
    chunk(std::integral_constant<int, 1>{});
    chunk(std::integral_constant<int, 2>{});
    chunk(std::integral_constant<int, 3>{});

    const __m128 dd = d_dmin_times(&x.d, y.d);  // d*y.d, dmin*y.d
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
    acc_m = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(mins), acc_m);
  }
  return hsum(_mm256_sub_ps(acc, acc_m));
}

float vec_dot_q4_K(int64_t n, const void* w, const void* a) { return vec_dot_q45_K<false, block_q4_K>(n, w, a); }
float vec_dot_q5_K(int64_t n, const void* w, const void* a) { return vec_dot_q45_K<true, block_q5_K>(n, w, a); }

// int16 lanes: scale 2k of the 8 in v's halves in the low 128 bits, scale 2k+1 in the high.
template <int k>
inline __m256i q6_scale_pair(__m256i v) {
  const int16_t lo = (int16_t)((4 * k + 1) << 8 | (4 * k)), hi = (int16_t)((4 * k + 3) << 8 | (4 * k + 2));
  return _mm256_shuffle_epi8(v, _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo)));
}

float vec_dot_q6_K(int64_t n, const void* w, const void* a) {
  const auto* wb = static_cast<const block_q6_K*>(w);
  const auto* ab = static_cast<const block_q8_K*>(a);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q6_K& x = wb[i];
    prefetch_ahead(&x);
    const block_q8_K& y = ab[i];
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales)));
    // sum_g scale_g * 32 * bsum_g, subtracted once instead of 32 per element.
    __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(y.bsums)), 5);
    sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
    for (int h = 0; h < 2; ++h) {
      const __m256i sc = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
                                : _mm256_permute2x128_si256(sc16, sc16, 0x11);
      const __m256i ql0 = load256(x.ql + 64 * h), ql1 = load256(x.ql + 64 * h + 32);
      const __m256i qh = load256(x.qh + 32 * h);
      const __m256i q0 = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
      const __m256i q1 = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
      const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
      const int8_t* a0 = y.qs + 128 * h;
      const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, load256(a0)), q6_scale_pair<0>(sc));
      const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load256(a0 + 32)), q6_scale_pair<1>(sc));
      const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(q2, load256(a0 + 64)), q6_scale_pair<2>(sc));
      const __m256i p3 = _mm256_madd_epi16(_mm256_maddubs_epi16(q3, load256(a0 + 96)), q6_scale_pair<3>(sc));
      sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x.d) * y.d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc);
}

// ---- dequantization (bit-exact with gguf: separate multiply and subtract) --------------

inline __m256 u8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }

template <bool kFive, typename Block>
void dequantize_row_q45_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const Block*>(src);
  const __m256i m4 = _mm256_set1_epi32(0x0F);
  const __m256i one = _mm256_set1_epi32(1);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const Block& b = blocks[i];
    const float d = h2f(b.d), dmin = h2f(b.dmin);
    const ScalesMins sm = unpack_scales_mins(b.scales);
    for (int c = 0; c < 4; ++c) {
      const __m256 d0 = _mm256_set1_ps(d * sm.sc[2 * c]), m0 = _mm256_set1_ps(dmin * sm.m[2 * c]);
      const __m256 d1 = _mm256_set1_ps(d * sm.sc[2 * c + 1]), m1 = _mm256_set1_ps(dmin * sm.m[2 * c + 1]);
      for (int g = 0; g < 4; ++g) {
        const __m256i v = _mm256_cvtepu8_epi32(load64(b.qs + 32 * c + 8 * g));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_srli_epi32(v, 4);
        if constexpr (kFive) {
          const __m256i h = _mm256_cvtepu8_epi32(load64(b.qh + 8 * g));
          lo = _mm256_or_si256(lo, _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(2 * c)), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(2 * c + 1)), one), 4));
        }
        _mm256_storeu_ps(y + 8 * g, _mm256_sub_ps(_mm256_mul_ps(d0, _mm256_cvtepi32_ps(lo)), m0));
        _mm256_storeu_ps(y + 32 + 8 * g, _mm256_sub_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(hi)), m1));
      }
      y += 64;
    }
  }
}

void dequantize_row_q4_K(const void* src, float* y, int64_t n) { dequantize_row_q45_K<false, block_q4_K>(src, y, n); }
void dequantize_row_q5_K(const void* src, float* y, int64_t n) { dequantize_row_q45_K<true, block_q5_K>(src, y, n); }

void dequantize_row_q6_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q6_K*>(src);
  const __m256i m4 = _mm256_set1_epi32(0x0F), m3 = _mm256_set1_epi32(3), m32 = _mm256_set1_epi32(32);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q6_K& b = blocks[i];
    const float d = h2f(b.d);
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k) {
        const uint8_t* ql = b.ql + 64 * h + 32 * (k & 1);
        const __m128i lo_shift = _mm_cvtsi32_si128(k < 2 ? 0 : 4), hi_shift = _mm_cvtsi32_si128(2 * k);
        for (int g = 0; g < 4; ++g) {
          const int e = 128 * h + 32 * k + 8 * g;
          const __m256i lo = _mm256_and_si256(_mm256_srl_epi32(_mm256_cvtepu8_epi32(load64(ql + 8 * g)), lo_shift), m4);
          const __m256i hi = _mm256_and_si256(_mm256_srl_epi32(_mm256_cvtepu8_epi32(load64(b.qh + 32 * h + 8 * g)), hi_shift), m3);
          const __m256i q = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), m32);
          _mm256_storeu_ps(y + e, _mm256_mul_ps(_mm256_set1_ps(d * b.scales[e / 16]), _mm256_cvtepi32_ps(q)));
        }
      }
    y += QK_K;
  }
}

void dequantize_row_q8_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q8_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m256 d = _mm256_set1_ps(blocks[i].d);
    for (int l = 0; l < QK_K; l += 8)
      _mm256_storeu_ps(y + l, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load64(blocks[i].qs + l)))));
    y += QK_K;
  }
}

// ---- Q8_K activation quantization (same bytes as the scalar kernel) -------------------

void quantize_row_q8_K(const float* x, void* dst, int64_t n) {
  auto* blocks = static_cast<block_q8_K*>(dst);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    block_q8_K& b = blocks[i];
    __m256 vamax = _mm256_setzero_ps();
    for (int l = 0; l < QK_K; l += 8) vamax = _mm256_max_ps(vamax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + l)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vamax), _mm256_extractf128_ps(vamax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    if (amax == 0.0f) {
      std::memset(&b, 0, sizeof(b));
      continue;
    }
    // The sign comes from the first element of largest magnitude, as in the scalar kernel.
    const __m256 vam = _mm256_set1_ps(amax);
    float vmax = amax;
    for (int l = 0; l < QK_K; l += 8) {
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + l)), vam, _CMP_EQ_OQ));
      if (hit) {
        vmax = x[l + __builtin_ctz(hit)];
        break;
      }
    }
    const float iscale = q8k_iscale(vmax);
    const __m256 vs = _mm256_set1_ps(iscale);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int l = 0; l < QK_K; l += 32) {
      // cvtps2dq rounds half to even; |iscale*x| <= 127 so packs never saturates.
      const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + l)));
      const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + l + 8)));
      const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + l + 16)));
      const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + l + 24)));
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.qs + l), _mm256_permutevar8x32_epi32(p, order));
      // Two group sums of 16: [g0 g0 g1 g1 | g0 g0 g1 g1] partials, then add the halves.
      __m256i s = _mm256_hadd_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
      s = _mm256_hadd_epi32(s, s);
      const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      b.bsums[l / 16] = (int16_t)_mm_cvtsi128_si32(t);
      b.bsums[l / 16 + 1] = (int16_t)_mm_extract_epi32(t, 1);
    }
    b.d = 1.0f / iscale;
  }
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

}  // namespace pyresa::cpu::avx2
