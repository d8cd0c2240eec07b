// AVX2 build of the attention inner loop (see attention_impl.h).
#include <immintrin.h>

#include "backends/cpu/attention_impl.h"
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu::avx2 {
namespace {
struct Simd {
  using V = __m256;
  static constexpr int W = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V load_half(const fp16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
}  // namespace

void fill_attention_kernels(CpuKernels& k) { k.attend_key_range = &attention_detail::attend_key_range_impl<Simd>; }
}  // namespace pyresa::cpu::avx2
