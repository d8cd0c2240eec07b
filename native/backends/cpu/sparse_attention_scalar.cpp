// Sparse attention kernel, portable scalar build (one float per "vector"): the fallback and the
// reading of sparse_attention_kernel.h without SIMD.
#include <math.h>

#include "backends/cpu/sparse_attention_kernel.h"
#include "formats/fp16.h"

namespace pyresa::cpu::scalar {

namespace {

struct Ops {
  using Vec = float;
  static constexpr int kAccRegs = 8;
  static constexpr int W = 1;
  static Vec zero() { return 0.0f; }
  static Vec set1(float x) { return x; }
  static Vec load(const float* p) { return *p; }
  static void store(float* p, Vec v) { *p = v; }
  static Vec load_part(const float* p, int n) { return n > 0 ? *p : 0.0f; }
  static void store_part(float* p, Vec v, int n) {
    if (n > 0) *p = v;
  }
  static Vec load_h(const uint16_t* p) { return fp16_to_fp32(*p); }
  static Vec load_h_part(const uint16_t* p, int n) { return n > 0 ? fp16_to_fp32(*p) : 0.0f; }
  static Vec add(Vec a, Vec b) { return a + b; }
  static Vec sub(Vec a, Vec b) { return a - b; }
  static Vec mul(Vec a, Vec b) { return a * b; }
  static Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
  static Vec keep_first(Vec v, int n, float fill) { return n > 0 ? v : fill; }
  static float hmax(Vec v) { return v; }
  static float hsum(Vec v) { return v; }
  static Vec lane_sums(const Vec* v) { return v[0]; }
  static Vec exp(Vec x) { return expf(x); }
};

}  // namespace

void sparse_attention_item(const SparseAttentionItem& it) { sparse_attention_item_impl<Ops>(it); }
void causal_attention_item(const CausalAttentionItem& it) { causal_attention_item_impl<Ops>(it); }

}  // namespace pyresa::cpu::scalar
