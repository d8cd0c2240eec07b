// K-quant weight quantizers: super-blocks of 256 whose sub-block scales are themselves
// quantized (6 bits in Q4_K/Q5_K, 8 bits in Q6_K).
//
// The error of a K-quant is dominated by the choice of each sub-block's scale (and min), so
// each sub-block tries a small grid of scales around the range-filling one and, for each,
// solves the weighted least-squares problem for the best scale (and min) given the rounded
// quants; the best fit wins. Weights favour large-magnitude elements, which matter most to a
// matrix product: |x| + rms(sub-block) for Q4_K/Q5_K, x^2 for Q6_K.
// After the sub-block scales are quantized, the quants are rounded again against the scales
// that will actually be stored.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "formats/fp16.h"
#include "formats/quantize.h"

namespace pyresa {

namespace {

// Round to nearest (ties to even) for |v| < 2^22: adding 1.5 * 2^23 leaves the rounded integer in
// the low mantissa bits. Branch-free and vectorisable, unlike a call to lrintf.
inline int nearest_int(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The same rounding, kept in float: (v + 1.5 * 2^23) - 1.5 * 2^23 is v rounded to an integer.
inline float round_float(float v) { return (v + 12582912.0f) - 12582912.0f; }

inline float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// The search loops below reduce over 16 or 32 elements. Summing into kLanes independent
// partial sums lets the compiler vectorise them (a single float accumulator is a serial
// dependency chain it may not reorder) and is what makes K-quant conversion of a 7B model take
// minutes rather than a quarter of an hour.
constexpr int kLanes = 8;

// The searches are also compiled for AVX2+FMA and picked at load time when the CPU has them
// (GCC/Clang function multi-versioning); the rest of the library stays baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYRESA_SEARCH_CLONES __attribute__((target_clones("avx2,fma", "default")))
#else
#define PYRESA_SEARCH_CLONES
#endif

inline float lane_sum(const float* a) {
  float s = 0;
  for (int k = 0; k < kLanes; k++) s += a[k];
  return s;
}

// Fit x ≈ scale * q - min with q in [0, nmax] and min >= 0, minimising Σ w (scale q - min - x)^2.
// Rounding and the best (scale, min) depend on each other, so each candidate alternates:
// round x to the current grid, solve the weighted least squares for (scale, min) given those
// quants, round again to the new grid... while the error drops (at most `refine` times).
// Candidates start from the range-filling grid stretched by (nmax + r) / nmax for r in
// r0, r0 + dr, ... (`steps` values); the best candidate is then refined further.
// Writes the quants to q and the min to *min_out; returns the scale.
PYRESA_SEARCH_CLONES float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* q, float* min_out,
                    float r0, float dr, int steps, int refine) {
  float lo = x[0], hi = x[0];
  float sw = 0, swx = 0, swxx = 0;
  for (int i = 0; i < n; i++) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sw += w[i];
    swx += w[i] * x[i];
    swxx += w[i] * x[i] * x[i];
  }
  if (lo > 0) lo = 0;  // the stored min is non-negative, so the offset can only pull values down
  if (hi <= lo) {
    std::memset(q, 0, (size_t)n);
    *min_out = -lo;
    return 0.0f;
  }

  struct Fit {
    float s, m;
    double err;
  };
  // Levels l = round((x - offset) * iscale), then the least-squares (s, m) for them.
  auto round_fit = [&](float iscale, float offset, float* l) -> Fit {
    float a_l[kLanes] = {}, a_ll[kLanes] = {}, a_xl[kLanes] = {};
    for (int i0 = 0; i0 < n; i0 += kLanes) {
      for (int k = 0; k < kLanes; k++) {
        const int i = i0 + k;
        const float v = clampf(round_float(iscale * (x[i] - offset)), 0.0f, (float)nmax);
        l[i] = v;
        const float wv = w[i] * v;
        a_l[k] += wv;
        a_ll[k] += wv * v;
        a_xl[k] += wv * x[i];
      }
    }
    const float swl = lane_sum(a_l), swll = lane_sum(a_ll), swxl = lane_sum(a_xl);
    const float det = sw * swll - swl * swl;  // normal equations of min over (s, m)
    if (det <= 0 || swll <= 0) return {0, 0, -1};
    float s = (sw * swxl - swx * swl) / det;
    float m = (swll * swx - swl * swxl) / det;
    if (m > 0) {  // the offset must stay <= 0: refit the scale alone
      m = 0;
      s = swxl / swll;
    }
    // Σ w (s l + m - x)^2 expanded over the sums above.
    const double err = (double)s * s * swll + 2.0 * s * m * swl - 2.0 * s * swxl + (double)m * m * sw -
                       2.0 * m * swx + swxx;
    return {s, m, err};
  };
  auto improve = [&](Fit f, float* l, float* tmp, int times) -> Fit {
    for (int k = 0; k < times && f.s > 0; k++) {
      const Fit g = round_fit(1.0f / f.s, f.m, tmp);
      if (g.err < 0 || g.err >= f.err) break;
      f = g;
      std::memcpy(l, tmp, sizeof(float) * n);
    }
    return f;
  };

  float levels[QK_K], trial[QK_K], tmp[QK_K];
  Fit best = round_fit(nmax / (hi - lo), lo, levels);
  if (best.err < 0) best = {(hi - lo) / nmax, lo, 1e300};
  for (int step = 0; step < steps; step++) {
    Fit f = round_fit((nmax + r0 + dr * step) / (hi - lo), lo, trial);
    if (f.err < 0) continue;
    f = improve(f, trial, tmp, refine);
    if (f.err < best.err) {
      best = f;
      std::memcpy(levels, trial, sizeof(float) * n);
    }
  }
  best = improve(best, levels, tmp, 4);
  for (int i = 0; i < n; i++) q[i] = (uint8_t)levels[i];
  *min_out = -best.m;
  return best.s;
}

// Fit x ≈ scale * q with q in [-nmax, nmax - 1] maximising the weighted fit (weights x^2).
// The sign of the scale follows the element of largest magnitude, which maps to -nmax, so the
// asymmetric integer range is used in full.
PYRESA_SEARCH_CLONES float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* q) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; i++) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < 1e-30f) {
    std::memset(q, 0, (size_t)n);
    return 0.0f;
  }
  float best_scale = 0, best_fit = -1;
  float w[QK_K], trial[QK_K], levels[QK_K] = {};
  for (int i = 0; i < n; i++) w[i] = x[i] * x[i];
  for (int step = -9; step <= 9; step++) {
    const float iscale = -(nmax + 0.1f * step) / max;
    float a_xl[kLanes] = {}, a_ll[kLanes] = {};
    for (int i0 = 0; i0 < n; i0 += kLanes) {
      for (int k = 0; k < kLanes; k++) {
        const int i = i0 + k;
        const float l = clampf(round_float(iscale * x[i]), (float)-nmax, (float)(nmax - 1));
        trial[i] = l;
        a_xl[k] += w[i] * x[i] * l;
        a_ll[k] += w[i] * l * l;
      }
    }
    const float sxl = lane_sum(a_xl), sll = lane_sum(a_ll);
    // With the optimal scale sxl/sll the weighted error is Σwx² - sxl²/sll: maximise sxl²/sll.
    if (sll > 0 && (best_fit < 0 || sxl * sxl > best_fit * sll)) {
      best_fit = sxl * sxl / sll;
      best_scale = sxl / sll;
      std::memcpy(levels, trial, sizeof(float) * n);
    }
  }
  for (int i = 0; i < n; i++) q[i] = (int8_t)levels[i];
  return best_scale;
}

// Q4_K/Q5_K store 8 scales and 8 mins of 6 bits in 12 bytes: bytes 0-3 and 4-7 hold the low
// 6 bits of scales/mins 0-3 with bits 4-5 of scales/mins 4-7 on top; bytes 8-11 hold the low
// nibbles of scales 4-7 (low half) and mins 4-7 (high half).
void pack_scales_mins(const uint8_t* sc, const uint8_t* mn, uint8_t* out) {
  for (int j = 0; j < 4; j++) {
    out[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    out[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

// The shared part of Q4_K and Q5_K: per sub-block scale/min fit, 6-bit scale quantization,
// and the final quants (0..nmax) against the stored scales.
PYRESA_SEARCH_CLONES void quantize_superblock_scale_min(const float* x, int nmax, float r0, float dr, int steps, int refine, fp16_t* d_out,
                                   fp16_t* dmin_out, uint8_t* scales_out, uint8_t* q /* 256 */) {
  float scales[8], mins[8], w[32];
  for (int j = 0; j < 8; j++) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int i = 0; i < 32; i++) sum_x2 += xs[i] * xs[i];
    const float rms = std::sqrt(sum_x2 / 32);
    for (int i = 0; i < 32; i++) w[i] = rms + std::fabs(xs[i]);
    scales[j] = fit_scale_min(32, nmax, xs, w, q + 32 * j, &mins[j], r0, dr, steps, refine);
  }
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; j++) {
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; j++) {
    ls[j] = (uint8_t)clampi(nearest_int(inv_scale * scales[j]), 0, 63);
    lm[j] = (uint8_t)clampi(nearest_int(inv_min * mins[j]), 0, 63);
  }
  *d_out = fp32_to_fp16(max_scale / 63.0f);
  *dmin_out = fp32_to_fp16(max_min / 63.0f);
  const float d = fp16_to_fp32(*d_out), dmin = fp16_to_fp32(*dmin_out);
  // A sub-block whose scale is small next to the super-block's largest (an outlier elsewhere)
  // gets a coarse 6-bit scale; rounding it to the nearest level is not always best. Try the
  // neighbouring levels of scale and min and keep the pair with the least weighted error,
  // re-rounding the quants for each.
  for (int j = 0; j < 8; j++) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int i = 0; i < 32; i++) sum_x2 += xs[i] * xs[i];
    const float rms = std::sqrt(sum_x2 / 32);
    for (int i = 0; i < 32; i++) w[i] = rms + std::fabs(xs[i]);
    int best_ls = ls[j], best_lm = lm[j];
    double best_err = -1;
    for (int a = std::max(0, ls[j] - 1); a <= std::min(63, ls[j] + 1); a++) {
      const float ds = d * a;
      if (ds == 0.0f) continue;
      const float ids = 1.0f / ds;
      for (int b = std::max(0, lm[j] - 1); b <= std::min(63, lm[j] + 1); b++) {
        const float dm = dmin * b;
        float acc[kLanes] = {};
        for (int i0 = 0; i0 < 32; i0 += kLanes) {
          for (int k = 0; k < kLanes; k++) {
            const int i = i0 + k;
            const float l = clampf(round_float((xs[i] + dm) * ids), 0.0f, (float)nmax);
            const float diff = ds * l - dm - xs[i];
            acc[k] += w[i] * diff * diff;
          }
        }
        const double err = lane_sum(acc);
        if (best_err < 0 || err < best_err) {
          best_err = err;
          best_ls = a;
          best_lm = b;
        }
      }
    }
    ls[j] = (uint8_t)best_ls;
    lm[j] = (uint8_t)best_lm;
    const float ds = d * ls[j];
    if (ds == 0.0f) continue;  // the fitted quants stay; they all multiply a zero scale
    const float dm = dmin * lm[j];
    const float ids = 1.0f / ds;
    for (int i = 0; i < 32; i++) q[32 * j + i] = (uint8_t)clampi(nearest_int((xs[i] + dm) * ids), 0, nmax);
  }
  pack_scales_mins(ls, lm, scales_out);
}

}  // namespace

void quantize_row_q4_K(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q4_K*>(dst);
  uint8_t q[QK_K];
  for (int64_t b = 0; b < n / QK_K; b++) {
    quantize_superblock_scale_min(src + b * QK_K, 15, -1.0f, 0.2f, 11, 2, &y[b].d, &y[b].dmin, y[b].scales, q);
    // 32-byte chunks: sub-block 2c in the low nibbles, 2c + 1 in the high nibbles.
    for (int c = 0; c < 4; c++)
      for (int i = 0; i < 32; i++) y[b].qs[32 * c + i] = (uint8_t)(q[64 * c + i] | (q[64 * c + 32 + i] << 4));
  }
}

void quantize_row_q5_K(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q5_K*>(dst);
  uint8_t q[QK_K];
  for (int64_t b = 0; b < n / QK_K; b++) {
    quantize_superblock_scale_min(src + b * QK_K, 31, -0.5f, 0.2f, 8, 2, &y[b].d, &y[b].dmin, y[b].scales, q);
    // Low nibbles as in Q4_K; bit 4 of element i of sub-block j is bit j of qh[i].
    std::memset(y[b].qh, 0, sizeof(y[b].qh));
    for (int c = 0; c < 4; c++)
      for (int i = 0; i < 32; i++)
        y[b].qs[32 * c + i] = (uint8_t)((q[64 * c + i] & 15) | ((q[64 * c + 32 + i] & 15) << 4));
    for (int j = 0; j < 8; j++)
      for (int i = 0; i < 32; i++) y[b].qh[i] |= (uint8_t)((q[32 * j + i] >> 4) << j);
  }
}

void quantize_row_q6_K(const float* src, void* dst, int64_t n) {
  auto* y = static_cast<block_q6_K*>(dst);
  int8_t q[QK_K];
  for (int64_t b = 0; b < n / QK_K; b++) {
    const float* x = src + b * QK_K;
    float scales[16];
    float max_scale = 0, amax_scale = 0;
    for (int j = 0; j < 16; j++) {
      scales[j] = fit_scale_symmetric(16, 32, x + 16 * j, q + 16 * j);
      if (std::fabs(scales[j]) > amax_scale) {
        amax_scale = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    uint8_t u[QK_K];
    if (amax_scale == 0.0f) {
      std::memset(y[b].scales, 0, sizeof(y[b].scales));
      y[b].d = fp32_to_fp16(0.0f);
      std::memset(u, 32, sizeof(u));
    } else {
      // 8-bit signed scales; the largest one maps to -128 so its sign is folded into d.
      const float iscale = -128.0f / max_scale;
      y[b].d = fp32_to_fp16(1.0f / iscale);
      const float d = fp16_to_fp32(y[b].d);
      for (int j = 0; j < 16; j++) {
        const int s = clampi(nearest_int(iscale * scales[j]), -128, 127);
        y[b].scales[j] = (int8_t)s;
        const float ds = d * s;
        for (int i = 0; i < 16; i++) {
          const int l = ds != 0.0f ? clampi(nearest_int(x[16 * j + i] / ds), -32, 31) : 0;
          u[16 * j + i] = (uint8_t)(l + 32);
        }
      }
    }
    // Two halves of 128: ql holds low nibbles (elements l, l+32 low; l+64, l+96 high),
    // qh the top two bits of elements l, l+32, l+64, l+96 at bit offsets 0, 2, 4, 6.
    for (int h = 0; h < 2; h++) {
      const uint8_t* e = u + 128 * h;
      uint8_t* ql = y[b].ql + 64 * h;
      uint8_t* qh = y[b].qh + 32 * h;
      for (int l = 0; l < 32; l++) {
        ql[l] = (uint8_t)((e[l] & 15) | ((e[l + 64] & 15) << 4));
        ql[l + 32] = (uint8_t)((e[l + 32] & 15) | ((e[l + 96] & 15) << 4));
        qh[l] = (uint8_t)((e[l] >> 4) | ((e[l + 32] >> 4) << 2) | ((e[l + 64] >> 4) << 4) | ((e[l + 96] >> 4) << 6));
      }
    }
  }
}

}  // namespace pyresa
