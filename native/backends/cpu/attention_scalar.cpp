// Portable build of the attention inner loop (see attention_impl.h).
#include "backends/cpu/attention_impl.h"
#include "backends/cpu/cpu_kernels.h"
#include "formats/fp16.h"

namespace pyresa::cpu::scalar {
namespace {
struct Simd {
  using V = float;
  static constexpr int W = 1;
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V load_half(const fp16_t* p) { return fp16_to_fp32(*p); }
  static V set1(float x) { return x; }
  static V mul(V a, V b) { return a * b; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static float reduce_add(V v) { return v; }
};
}  // namespace

void fill_attention_kernels(CpuKernels& k) { k.attend_key_range = &attention_detail::attend_key_range_impl<Simd>; }
}  // namespace pyresa::cpu::scalar
