// Y = X · Wᵀ for a quantized weight W [rows × cols] and float activations X [n_tokens × cols].
// Activations are quantized once into the weight type's dot format (Q8_0 / Q8_1 / Q8_K), then
// every (weight row, token) pair is one integer SIMD dot product, as ggml does.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backends/cpu/thread_pool.h"
#include "formats/ggml_types.h"

namespace pyresa::cpu {

// A 2-D weight matrix in a GGUF file, used in place: `rows` rows of `cols` elements each.
struct WeightView {
  GgmlType type = GgmlType::F32;
  int64_t cols = 0;   // ggml ne[0]: the reduction dimension
  int64_t rows = 0;   // ggml ne[1]: output features
  const void* data = nullptr;
  size_t row_bytes = 0;
  bool present() const { return data != nullptr; }
  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes; }
};

// Scratch for the quantized activations, reused across calls so decoding does not allocate.
struct MatmulScratch {
  std::vector<uint8_t> quantized;
};

// y[t][r] = Σ_c x[t][c] · W[r][c]  (+ bias[r] if bias is given)
void matmul(const WeightView& w, const float* x, int n_tokens, float* y, const float* bias,
            ThreadPool& pool, MatmulScratch& scratch);

// Several weights applied to the same activations (q, k, v; or gate, up): one quantization
// of x and one pool job. All weights share `cols` and type's dot format.
struct MatmulOutput {
  const WeightView* w;
  float* y;
  const float* bias;
};
void matmul_multi(const MatmulOutput* outs, int n_outs, const float* x, int n_tokens,
                  ThreadPool& pool, MatmulScratch& scratch);

// Dequantize row r of w into dst (embedding lookup).
void dequantize_weight_row(const WeightView& w, int64_t r, float* dst);

}  // namespace pyresa::cpu
