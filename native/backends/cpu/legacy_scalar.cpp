// Legacy ggml formats (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the float helpers,
// in portable C++: the reference the SIMD kernel sets are tested against, and the fallback
// on CPUs without AVX2.
#include <cmath>
#include <cstring>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/legacy_common.h"
#include "formats/fp16.h"

namespace pyresa::cpu::scalar {

namespace {

inline float h2f(fp16_t h) { return fp16_to_fp32(h); }

// Quantized weight value of element j of a 32-element block, as the integer ggml defines.
inline int nib_lo(const uint8_t* qs, int j) { return qs[j] & 0x0f; }
inline int nib_hi(const uint8_t* qs, int j) { return qs[j] >> 4; }
inline uint32_t load_qh(const uint8_t* qh) {
  uint32_t v;
  std::memcpy(&v, qh, 4);  // little-endian: bit j is element j's fifth bit
  return v;
}
inline int bit5(uint32_t qh, int j) { return (int)((qh >> j) & 1u) << 4; }

// ---- F32 ------------------------------------------------------------------------------

void copy_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void quantize_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

float dot_f32(int64_t n, const void* wv, const void* av) {
  const float* w = static_cast<const float*>(wv);
  const float* a = static_cast<const float*>(av);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent chains, summed at the end
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += w[i + k] * a[i + k];
  for (; i < n; ++i) acc[0] += w[i] * a[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// ---- F16 / BF16 -----------------------------------------------------------------------

void dequantize_f16(const void* src, float* dst, int64_t n) {
  const fp16_t* s = static_cast<const fp16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = h2f(s[i]);
}

float dot_f16(int64_t n, const void* wv, const void* av) {
  const fp16_t* w = static_cast<const fp16_t*>(wv);
  const float* a = static_cast<const float*>(av);
  float acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += h2f(w[i + k]) * a[i + k];
  for (; i < n; ++i) acc[0] += h2f(w[i]) * a[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void dequantize_bf16(const void* src, float* dst, int64_t n) {
  const bf16_t* s = static_cast<const bf16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
}

float dot_bf16(int64_t n, const void* wv, const void* av) {
  const bf16_t* w = static_cast<const bf16_t*>(wv);
  const float* a = static_cast<const float*>(av);
  float acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += bf16_to_fp32(w[i + k]) * a[i + k];
  for (; i < n; ++i) acc[0] += bf16_to_fp32(w[i]) * a[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// ---- activation quantizers --------------------------------------------------------------

// One block of 32 floats -> scale and int8 quants; returns the sum of the quants.
int quantize_block_q8(const float* x, fp16_t* d, int8_t* qs, float* d_unrounded = nullptr) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  if (d_unrounded) *d_unrounded = amax / 127.0f;
  const float inv = legacy::q8_block_scale(amax, d);
  int sum = 0;
  for (int j = 0; j < 32; ++j) {
    // lrintf rounds half to even, like the SIMD kernels' float->int conversion.
    long q = std::lrintf(x[j] * inv);
    q = q > 127 ? 127 : (q < -127 ? -127 : q);
    qs[j] = (int8_t)q;
    sum += (int)q;
  }
  return sum;
}

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  block_q8_0* y = static_cast<block_q8_0*>(dst);
  for (int64_t b = 0; b < n / QK8_0; ++b) quantize_block_q8(src + b * QK8_0, &y[b].d, y[b].qs);
}

void quantize_q8_1(const float* src, void* dst, int64_t n) {
  block_q8_1* y = static_cast<block_q8_1*>(dst);
  for (int64_t b = 0; b < n / QK8_1; ++b) {
    float d = 0.0f;
    const int sum = quantize_block_q8(src + b * QK8_1, &y[b].d, y[b].qs, &d);
    y[b].s = fp32_to_fp16(d * (float)sum);  // the unrounded d, as ggml computes s
  }
}

// ---- Q8_0 -----------------------------------------------------------------------------

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
  const block_q8_0* x = static_cast<const block_q8_0*>(src);
  for (int64_t b = 0; b < n / QK8_0; ++b, dst += QK8_0) {
    const float d = h2f(x[b].d);
    for (int j = 0; j < QK8_0; ++j) dst[j] = d * (float)x[b].qs[j];
  }
}

float dot_q8_0(int64_t n, const void* wv, const void* av) {
  const block_q8_0* w = static_cast<const block_q8_0*>(wv);
  const block_q8_0* a = static_cast<const block_q8_0*>(av);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK8_0; ++b) {
    int isum = 0;
    for (int j = 0; j < QK8_0; ++j) isum += (int)w[b].qs[j] * (int)a[b].qs[j];
    sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)isum;
  }
  return sum;
}

void dequantize_q8_1(const void* src, float* dst, int64_t n) {
  const block_q8_1* x = static_cast<const block_q8_1*>(src);
  for (int64_t b = 0; b < n / QK8_1; ++b, dst += QK8_1) {
    const float d = h2f(x[b].d);
    for (int j = 0; j < QK8_1; ++j) dst[j] = d * (float)x[b].qs[j];
  }
}

// ---- Q4_0 / Q4_1 ----------------------------------------------------------------------

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const block_q4_0* x = static_cast<const block_q4_0*>(src);
  for (int64_t b = 0; b < n / QK4_0; ++b, dst += QK4_0) {
    const float d = h2f(x[b].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      dst[j] = d * (float)(nib_lo(x[b].qs, j) - 8);
      dst[j + QK4_0 / 2] = d * (float)(nib_hi(x[b].qs, j) - 8);
    }
  }
}

float dot_q4_0(int64_t n, const void* wv, const void* av) {
  const block_q4_0* w = static_cast<const block_q4_0*>(wv);
  const block_q8_0* a = static_cast<const block_q8_0*>(av);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK4_0; ++b) {
    int isum = 0;
    for (int j = 0; j < QK4_0 / 2; ++j)
      isum += (nib_lo(w[b].qs, j) - 8) * a[b].qs[j] + (nib_hi(w[b].qs, j) - 8) * a[b].qs[j + QK4_0 / 2];
    sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)isum;
  }
  return sum;
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const block_q4_1* x = static_cast<const block_q4_1*>(src);
  for (int64_t b = 0; b < n / QK4_1; ++b, dst += QK4_1) {
    const float d = h2f(x[b].d), m = h2f(x[b].m);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      dst[j] = d * (float)nib_lo(x[b].qs, j) + m;
      dst[j + QK4_1 / 2] = d * (float)nib_hi(x[b].qs, j) + m;
    }
  }
}

// sum_j (d q_j + m)(da a_j) = d da sum_j q_j a_j + m (da sum_j a_j), the last factor being s.
float dot_q4_1(int64_t n, const void* wv, const void* av) {
  const block_q4_1* w = static_cast<const block_q4_1*>(wv);
  const block_q8_1* a = static_cast<const block_q8_1*>(av);
  float sum = 0.0f, sum_m = 0.0f;
  for (int64_t b = 0; b < n / QK4_1; ++b) {
    int isum = 0;
    for (int j = 0; j < QK4_1 / 2; ++j)
      isum += nib_lo(w[b].qs, j) * a[b].qs[j] + nib_hi(w[b].qs, j) * a[b].qs[j + QK4_1 / 2];
    sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)isum;
    sum_m += h2f(w[b].m) * h2f(a[b].s);
  }
  return sum + sum_m;
}

// ---- Q5_0 / Q5_1 ----------------------------------------------------------------------

void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const block_q5_0* x = static_cast<const block_q5_0*>(src);
  for (int64_t b = 0; b < n / QK5_0; ++b, dst += QK5_0) {
    const float d = h2f(x[b].d);
    const uint32_t qh = load_qh(x[b].qh);
    for (int j = 0; j < QK5_0 / 2; ++j) {
      dst[j] = d * (float)((nib_lo(x[b].qs, j) | bit5(qh, j)) - 16);
      dst[j + QK5_0 / 2] = d * (float)((nib_hi(x[b].qs, j) | bit5(qh, j + 16)) - 16);
    }
  }
}

float dot_q5_0(int64_t n, const void* wv, const void* av) {
  const block_q5_0* w = static_cast<const block_q5_0*>(wv);
  const block_q8_0* a = static_cast<const block_q8_0*>(av);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK5_0; ++b) {
    const uint32_t qh = load_qh(w[b].qh);
    int isum = 0;
    for (int j = 0; j < QK5_0 / 2; ++j)
      isum += ((nib_lo(w[b].qs, j) | bit5(qh, j)) - 16) * a[b].qs[j] +
              ((nib_hi(w[b].qs, j) | bit5(qh, j + 16)) - 16) * a[b].qs[j + QK5_0 / 2];
    sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)isum;
  }
  return sum;
}

void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const block_q5_1* x = static_cast<const block_q5_1*>(src);
  for (int64_t b = 0; b < n / QK5_1; ++b, dst += QK5_1) {
    const float d = h2f(x[b].d), m = h2f(x[b].m);
    const uint32_t qh = load_qh(x[b].qh);
    for (int j = 0; j < QK5_1 / 2; ++j) {
      dst[j] = d * (float)(nib_lo(x[b].qs, j) | bit5(qh, j)) + m;
      dst[j + QK5_1 / 2] = d * (float)(nib_hi(x[b].qs, j) | bit5(qh, j + 16)) + m;
    }
  }
}

float dot_q5_1(int64_t n, const void* wv, const void* av) {
  const block_q5_1* w = static_cast<const block_q5_1*>(wv);
  const block_q8_1* a = static_cast<const block_q8_1*>(av);
  float sum = 0.0f, sum_m = 0.0f;
  for (int64_t b = 0; b < n / QK5_1; ++b) {
    const uint32_t qh = load_qh(w[b].qh);
    int isum = 0;
    for (int j = 0; j < QK5_1 / 2; ++j)
      isum += (nib_lo(w[b].qs, j) | bit5(qh, j)) * a[b].qs[j] +
              (nib_hi(w[b].qs, j) | bit5(qh, j + 16)) * a[b].qs[j + QK5_1 / 2];
    sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)isum;
    sum_m += h2f(w[b].m) * h2f(a[b].s);
  }
  return sum + sum_m;
}

// ---- float helpers (attention, KV cache) ---------------------------------------------

float dot_f32_f16(const float* a, const fp16_t* b, int n) {
  float acc[4] = {0, 0, 0, 0};
  int i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += a[i + k] * h2f(b[i + k]);
  for (; i < n; ++i) acc[0] += a[i] * h2f(b[i]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void axpy_f16(float alpha, const fp16_t* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * h2f(x[i]);
}

void fp32_to_fp16_row(const float* src, fp16_t* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

void fp16_to_fp32_row(const fp16_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = h2f(src[i]);
}

}  // namespace

void fill_legacy_kernels(CpuKernels& k) {
  auto& f32 = k.types[(int)GgmlType::F32];
  f32.dequantize_row = copy_f32;
  f32.quantize_row = quantize_f32;
  f32.vec_dot = dot_f32;

  auto& f16 = k.types[(int)GgmlType::F16];
  f16.dequantize_row = dequantize_f16;
  f16.vec_dot = dot_f16;

  auto& bf16 = k.types[(int)GgmlType::BF16];
  bf16.dequantize_row = dequantize_bf16;
  bf16.vec_dot = dot_bf16;

  auto& q4_0 = k.types[(int)GgmlType::Q4_0];
  q4_0.dequantize_row = dequantize_q4_0;
  q4_0.vec_dot = dot_q4_0;

  auto& q4_1 = k.types[(int)GgmlType::Q4_1];
  q4_1.dequantize_row = dequantize_q4_1;
  q4_1.vec_dot = dot_q4_1;

  auto& q5_0 = k.types[(int)GgmlType::Q5_0];
  q5_0.dequantize_row = dequantize_q5_0;
  q5_0.vec_dot = dot_q5_0;

  auto& q5_1 = k.types[(int)GgmlType::Q5_1];
  q5_1.dequantize_row = dequantize_q5_1;
  q5_1.vec_dot = dot_q5_1;

  auto& q8_0 = k.types[(int)GgmlType::Q8_0];
  q8_0.dequantize_row = dequantize_q8_0;
  q8_0.quantize_row = quantize_q8_0;
  q8_0.vec_dot = dot_q8_0;

  auto& q8_1 = k.types[(int)GgmlType::Q8_1];
  q8_1.quantize_row = quantize_q8_1;
  q8_1.dequantize_row = dequantize_q8_1;  // activations only; for inspection and tests

  k.dot_f32_f16 = dot_f32_f16;
  k.axpy_f16 = axpy_f16;
  k.fp32_to_fp16_row = fp32_to_fp16_row;
  k.fp16_to_fp32_row = fp16_to_fp32_row;
}

}  // namespace pyresa::cpu::scalar
