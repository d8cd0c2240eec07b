// Element-wise and row-wise float ops of the transformer block. They are a small share of a
// decode step (the matrix products and attention dominate), so they are plain loops.
#pragma once
#include <cstdint>

namespace pyresa::cpu {

// y = x / sqrt(mean(x²) + eps) * w, for each of n_rows rows of n elements.
void rms_norm(const float* x, const float* w, float* y, int n_rows, int64_t n, float eps);

enum class RopeStyle { Normal, NeoX };  // llama.cpp: Normal rotates (2i, 2i+1), NeoX (i, i + d/2)

// Rotate each of n_heads heads of head_dim values at position pos, in place.
void rope(float* x, int n_heads, int head_dim, int pos, float freq_base, RopeStyle style);

// out = silu(gate) * up
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// y += x
void add_in_place(float* y, const float* x, int64_t n);

}  // namespace pyresa::cpu
