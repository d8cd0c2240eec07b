#include "backends/cpu/ops.h"

#include <cmath>

namespace pyresa::cpu {

void rms_norm(const float* x, const float* w, float* y, int n_rows, int64_t n, float eps) {
  for (int r = 0; r < n_rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double sum = 0.0;  // double: the mean of squares over thousands of values must not drift
    for (int64_t i = 0; i < n; ++i) sum += (double)(xr[i] * xr[i]);
    const float scale = 1.0f / std::sqrt((float)(sum / n) + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

void rope(float* x, int n_heads, int head_dim, int pos, float freq_base, RopeStyle style) {
  // theta_i = pos * base^(-2i/d), built by repeated multiplication as llama.cpp does so the
  // rounding matches its cache.
  const int half = head_dim / 2;
  float cos_t[512], sin_t[512];
  const float theta_scale = std::pow(freq_base, -2.0f / head_dim);
  float theta = (float)pos;
  for (int i = 0; i < half; ++i) {
    cos_t[i] = std::cos(theta);
    sin_t[i] = std::sin(theta);
    theta *= theta_scale;
  }
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const int a = style == RopeStyle::Normal ? 2 * i : i;
      const int b = style == RopeStyle::Normal ? 2 * i + 1 : i + half;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * cos_t[i] - x1 * sin_t[i];
      v[b] = x0 * sin_t[i] + x1 * cos_t[i];
    }
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_in_place(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace pyresa::cpu
