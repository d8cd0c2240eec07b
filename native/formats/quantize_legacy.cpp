// Float and 32-element ("legacy") quantizers. Rounding follows ggml's reference quantizers
// exactly (truncation after +0.5/+8.5/+16.5 offsets, roundf for Q8_0, the first element of
// largest magnitude as the signed max), so the output equals gguf.quants.quantize byte for byte.
#include <cfloat>
#include <cmath>
#include <cstring>

#include "formats/fp16.h"
#include "formats/quantize.h"

namespace pyresa {

void quantize_row_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, (size_t)n * sizeof(float)); }

void quantize_row_f16(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<fp16_t*>(dst);
  for (int64_t i = 0; i < n; i++) out[i] = fp32_to_fp16(src[i]);
}

void quantize_row_bf16(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<bf16_t*>(dst);
  for (int64_t i = 0; i < n; i++) out[i] = fp32_to_bf16(src[i]);
}

namespace {

// The element of largest magnitude, with its sign (the first one on ties).
inline float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; j++) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

inline void min_max(const float* x, int n, float* mn, float* mx) {
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int j = 0; j < n; j++) {
    lo = x[j] < lo ? x[j] : lo;
    hi = x[j] > hi ? x[j] : hi;
  }
  *mn = lo;
  *mx = hi;
}

inline int clamp_trunc(float v, int hi) {
  int q = (int)v;  // v >= 0 here: truncation is ggml's rounding after the +0.5 offsets
  return q < 0 ? 0 : (q > hi ? hi : q);
}

}  // namespace

void quantize_row_q4_0(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q4_0*>(dst);
  for (int64_t b = 0; b < n / QK4_0; b++) {
    const float* x = src + b * QK4_0;
    const float d = signed_absmax(x, QK4_0) / -8.0f;  // the max maps to q = 0 (-8 after the offset)
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < QK4_0 / 2; j++) {
      const int q0 = clamp_trunc(x[j] * id + 8.5f, 15);
      const int q1 = clamp_trunc(x[j + QK4_0 / 2] * id + 8.5f, 15);
      y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q4_1(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q4_1*>(dst);
  for (int64_t b = 0; b < n / QK4_1; b++) {
    const float* x = src + b * QK4_1;
    float mn, mx;
    min_max(x, QK4_1, &mn, &mx);
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(mn);
    for (int j = 0; j < QK4_1 / 2; j++) {
      const int q0 = clamp_trunc((x[j] - mn) * id + 0.5f, 15);
      const int q1 = clamp_trunc((x[j + QK4_1 / 2] - mn) * id + 0.5f, 15);
      y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q5_0(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q5_0*>(dst);
  for (int64_t b = 0; b < n / QK5_0; b++) {
    const float* x = src + b * QK5_0;
    const float d = signed_absmax(x, QK5_0) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK5_0 / 2; j++) {
      const int q0 = clamp_trunc(x[j] * id + 16.5f, 31);
      const int q1 = clamp_trunc(x[j + QK5_0 / 2] * id + 16.5f, 31);
      y[b].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
      qh |= (uint32_t)(q0 >> 4) << j;
      qh |= (uint32_t)(q1 >> 4) << (j + QK5_0 / 2);
    }
    std::memcpy(y[b].qh, &qh, sizeof(qh));
  }
}

void quantize_row_q5_1(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q5_1*>(dst);
  for (int64_t b = 0; b < n / QK5_1; b++) {
    const float* x = src + b * QK5_1;
    float mn, mx;
    min_max(x, QK5_1, &mn, &mx);
    const float d = (mx - mn) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(mn);
    uint32_t qh = 0;
    for (int j = 0; j < QK5_1 / 2; j++) {
      const int q0 = clamp_trunc((x[j] - mn) * id + 0.5f, 31);
      const int q1 = clamp_trunc((x[j + QK5_1 / 2] - mn) * id + 0.5f, 31);
      y[b].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
      qh |= (uint32_t)(q0 >> 4) << j;
      qh |= (uint32_t)(q1 >> 4) << (j + QK5_1 / 2);
    }
    std::memcpy(y[b].qh, &qh, sizeof(qh));
  }
}

void quantize_row_q8_0(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q8_0*>(dst);
  for (int64_t b = 0; b < n / QK8_0; b++) {
    const float* x = src + b * QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; j++) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t)std::roundf(x[j] * id);  // half away from zero
  }
}

}  // namespace pyresa
