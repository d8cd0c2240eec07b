// K-quant kernels for AVX-512 (F, BW, VL, DQ, VNNI). A zmm holds 64 weights = two sub-blocks
// of 32 (Q4_K/Q5_K) or four groups of 16 (Q6_K), against 64 contiguous Q8_K activations.
//
// Dot products: vpdpbusd multiplies unsigned weights by signed activations and sums each 4
// into an int32 lane. That sum is at most 4 * 63 * 127 = 32004 in magnitude, so two zmm of
// such sums pack (vpackssdw, never saturating) into one zmm of int16, and vpdpwssd against the
// matching int16 sub-block scales multiplies and accumulates 32 of them in one instruction:
// no int32 multiplies, half the scale work. One int32 vector per super-block is converted to
// float once; mins and Q6_K's -32 offset come from Q8_K's bsums; one horizontal sum per row.
//
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/kquants_common.h"

namespace pyresa::cpu::avx512 {

namespace {

inline float h2f(fp16_t h) { return _cvtsh_ss(h); }

// The two adjacent fp16 fields at p (d, dmin) converted together and multiplied by s.
inline __m128 d_dmin_times(const fp16_t* p, float s) {
  int32_t bits;
  std::memcpy(&bits, p, 4);
  return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)), _mm_set1_ps(s));
}

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 32 bytes loaded into both halves of a zmm.
inline __m512i load256_twice(const void* p) { return _mm512_broadcast_i64x4(load256(p)); }

// vpackssdw(u, v) puts, in each 128-bit lane k, u's int32 lanes 4k..4k+3 then v's, as int16.
// For dot vectors whose int32 lane l belongs to group u_group(l) (resp. v_group(l)), this gives
// the group of each int16 lane of the packed vector: the index vector for vpermw over scales.
template <typename UGroup, typename VGroup>
inline __m512i packed_groups(UGroup u_group, VGroup v_group) {
  alignas(64) int16_t idx[32];
  for (int e = 0; e < 32; ++e) {
    const int k = e / 8, l = 4 * k + e % 4;
    idx[e] = (int16_t)((e % 8) < 4 ? u_group(l) : v_group(l));
  }
  return _mm512_load_si512(idx);
}

// ---- dot products --------------------------------------------------------------------

template <bool kFive, typename Block>
float vec_dot_q45_K(int64_t n, const void* w, const void* a) {
  const auto* wb = static_cast<const Block*>(w);
  const auto* ab = static_cast<const block_q8_K*>(a);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i sixteen = _mm512_set1_epi8(0x10);
  const __m512i nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);  // low half: low nibbles
  // The dot vector of chunk c has sub-block 2c in int32 lanes 0-7 and 2c+1 in lanes 8-15;
  // chunks are packed in pairs (0, 1) and (2, 3).
  auto chunk = [](int c) { return [c](int l) { return 2 * c + l / 8; }; };
  const __m512i pick[2] = {packed_groups(chunk(0), chunk(1)), packed_groups(chunk(2), chunk(3))};
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_m = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const Block& x = wb[i];
    prefetch_ahead(&x);
    const block_q8_K& y = ab[i];
    const __m128i sm = unpack_scales_mins_sse(x.scales);  // bytes: 8 scales, 8 mins
    const __m256i mins_dup = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));  // m0 m0 m1 m1 ...
    const __m256i mins = _mm256_madd_epi16(load256(y.bsums), mins_dup);

    __m512i qh;
    if constexpr (kFive) qh = load256_twice(x.qh);
    __m512i dots[4];
    for (int c = 0; c < 4; ++c) {
      // Low half: sub-block 2c (low nibbles), high half: sub-block 2c+1 (high nibbles).
      __m512i q = _mm512_and_si512(_mm512_srlv_epi64(load256_twice(x.qs + 32 * c), nibble_shift), m4);
      if constexpr (kFive) {  // fifth bit: bit 2c of qh for the low half, 2c+1 for the high half
        const __m512i bit = _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_set1_epi8((char)(1 << (2 * c))),
                                                   _mm512_set1_epi8((char)(2 << (2 * c))));
        q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(qh, bit), q, sixteen);
      }
      dots[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, load512(y.qs + 64 * c));
    }
    const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));  // int16 lanes 0-7: scales
    __m512i sumi = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_packs_epi32(dots[0], dots[1]),
                                       _mm512_permutexvar_epi16(pick[0], sc16));
    sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(dots[2], dots[3]), _mm512_permutexvar_epi16(pick[1], sc16));
    const __m128 dd = d_dmin_times(&x.d, y.d);  // d*y.d, dmin*y.d
    acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc);
    acc_m = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(mins), acc_m);
  }
  return _mm512_reduce_add_ps(_mm512_sub_ps(acc, _mm512_zextps256_ps512(acc_m)));
}

float vec_dot_q4_K(int64_t n, const void* w, const void* a) { return vec_dot_q45_K<false, block_q4_K>(n, w, a); }
float vec_dot_q5_K(int64_t n, const void* w, const void* a) { return vec_dot_q45_K<true, block_q5_K>(n, w, a); }

// Q6_K, per half of 128: zmm 0 holds groups k=0,1 (low nibbles of ql[0..63], qh bits 0-1 / 2-3),
// zmm 1 holds k=2,3 (high nibbles, qh bits 4-5 / 6-7). Each zmm spans four scales of 16.
float vec_dot_q6_K(int64_t n, const void* w, const void* a) {
  const auto* wb = static_cast<const block_q6_K*>(w);
  const auto* ab = static_cast<const block_q8_K*>(a);
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i qh_shift = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
  // The dot vector of elements 128h + 64z + (0..63) has group 8h + 4z + l/4 in int32 lane l;
  // the two of each half are packed together.
  auto groups = [](int h, int z) { return [h, z](int l) { return 8 * h + 4 * z + l / 4; }; };
  const __m512i pick[2] = {packed_groups(groups(0, 0), groups(0, 1)), packed_groups(groups(1, 0), groups(1, 1))};
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q6_K& x = wb[i];
    prefetch_ahead(&x);
    const block_q8_K& y = ab[i];
    const __m256i sc16 = _mm256_cvtepi8_epi16(load128(x.scales));
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(y.bsums)), 5);
    __m512i sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(offset));
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = load512(x.ql + 64 * h);
      const __m512i qh = _mm512_srlv_epi64(load256_twice(x.qh + 32 * h), qh_shift);  // [qh | qh >> 2]
      const __m512i q0 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_slli_epi16(qh, 4), m30));
      const __m512i q1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(qh, m30));
      const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q0, load512(y.qs + 128 * h));
      const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q1, load512(y.qs + 128 * h + 64));
      sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(d0, d1),
                                 _mm512_permutexvar_epi16(pick[h], _mm512_castsi256_si512(sc16)));
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(x.d) * y.d), _mm512_cvtepi32_ps(sumi), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// ---- dequantization (bit-exact with gguf: separate multiply and subtract) --------------

template <bool kFive, typename Block>
void dequantize_row_q45_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const Block*>(src);
  const __m512i m4 = _mm512_set1_epi32(0x0F), one = _mm512_set1_epi32(1);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const Block& b = blocks[i];
    const float d = h2f(b.d), dmin = h2f(b.dmin);
    const ScalesMins sm = unpack_scales_mins(b.scales);
    for (int c = 0; c < 4; ++c) {
      const __m512 d0 = _mm512_set1_ps(d * sm.sc[2 * c]), m0 = _mm512_set1_ps(dmin * sm.m[2 * c]);
      const __m512 d1 = _mm512_set1_ps(d * sm.sc[2 * c + 1]), m1 = _mm512_set1_ps(dmin * sm.m[2 * c + 1]);
      for (int g = 0; g < 2; ++g) {
        const __m512i v = _mm512_cvtepu8_epi32(load128(b.qs + 32 * c + 16 * g));
        __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_srli_epi32(v, 4);
        if constexpr (kFive) {
          const __m512i h = _mm512_cvtepu8_epi32(load128(b.qh + 16 * g));
          lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(2 * c)), one), 4));
          hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(2 * c + 1)), one), 4));
        }
        _mm512_storeu_ps(y + 16 * g, _mm512_sub_ps(_mm512_mul_ps(d0, _mm512_cvtepi32_ps(lo)), m0));
        _mm512_storeu_ps(y + 32 + 16 * g, _mm512_sub_ps(_mm512_mul_ps(d1, _mm512_cvtepi32_ps(hi)), m1));
      }
      y += 64;
    }
  }
}

void dequantize_row_q4_K(const void* src, float* y, int64_t n) { dequantize_row_q45_K<false, block_q4_K>(src, y, n); }
void dequantize_row_q5_K(const void* src, float* y, int64_t n) { dequantize_row_q45_K<true, block_q5_K>(src, y, n); }

void dequantize_row_q6_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q6_K*>(src);
  const __m512i m4 = _mm512_set1_epi32(0x0F), m3 = _mm512_set1_epi32(3), m32 = _mm512_set1_epi32(32);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const block_q6_K& b = blocks[i];
    const float d = h2f(b.d);
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k) {
        const uint8_t* ql = b.ql + 64 * h + 32 * (k & 1);
        const __m128i lo_shift = _mm_cvtsi32_si128(k < 2 ? 0 : 4), hi_shift = _mm_cvtsi32_si128(2 * k);
        for (int g = 0; g < 2; ++g) {  // 16 elements = one scale
          const int e = 128 * h + 32 * k + 16 * g;
          const __m512i lo = _mm512_and_si512(_mm512_srl_epi32(_mm512_cvtepu8_epi32(load128(ql + 16 * g)), lo_shift), m4);
          const __m512i hi = _mm512_and_si512(_mm512_srl_epi32(_mm512_cvtepu8_epi32(load128(b.qh + 32 * h + 16 * g)), hi_shift), m3);
          const __m512i q = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), m32);
          _mm512_storeu_ps(y + e, _mm512_mul_ps(_mm512_set1_ps(d * b.scales[e / 16]), _mm512_cvtepi32_ps(q)));
        }
      }
    y += QK_K;
  }
}

void dequantize_row_q8_K(const void* src, float* y, int64_t n) {
  const auto* blocks = static_cast<const block_q8_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m512 d = _mm512_set1_ps(blocks[i].d);
    for (int l = 0; l < QK_K; l += 16)
      _mm512_storeu_ps(y + l, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load128(blocks[i].qs + l)))));
    y += QK_K;
  }
}

// ---- Q8_K activation quantization (same bytes as the scalar kernel) -------------------

void quantize_row_q8_K(const float* x, void* dst, int64_t n) {
  auto* blocks = static_cast<block_q8_K*>(dst);
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    block_q8_K& b = blocks[i];
    __m512 vamax = _mm512_setzero_ps();
    for (int l = 0; l < QK_K; l += 16) vamax = _mm512_max_ps(vamax, _mm512_abs_ps(_mm512_loadu_ps(x + l)));
    const float amax = _mm512_reduce_max_ps(vamax);
    if (amax == 0.0f) {
      std::memset(&b, 0, sizeof(b));
      continue;
    }
    // The sign comes from the first element of largest magnitude, as in the scalar kernel.
    const __m512 vam = _mm512_set1_ps(amax);
    float vmax = amax;
    for (int l = 0; l < QK_K; l += 16) {
      const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + l)), vam, _CMP_EQ_OQ);
      if (hit) {
        vmax = x[l + __builtin_ctz(hit)];
        break;
      }
    }
    const float iscale = q8k_iscale(vmax);
    const __m512 vs = _mm512_set1_ps(iscale);
    for (int g = 0; g < QK_K / 16; ++g) {  // one zmm = one bsums group of 16
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(x + 16 * g)));  // half to even
      _mm_storeu_si128(reinterpret_cast<__m128i*>(b.qs + 16 * g), _mm512_cvtsepi32_epi8(q));
      b.bsums[g] = (int16_t)_mm512_reduce_add_epi32(q);
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

}  // namespace pyresa::cpu::avx512
