// AVX-512 build of the attention inner loop (see attention_impl.h).
#include <immintrin.h>

#include "backends/cpu/attention_impl.h"
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu::avx512 {
namespace {
struct Simd {
  using V = __m512;
  static constexpr int W = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V load_half(const fp16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }
};
}  // namespace

void fill_attention_kernels(CpuKernels& k) { k.attend_key_range = &attention_detail::attend_key_range_impl<Simd>; }
}  // namespace pyresa::cpu::avx512
