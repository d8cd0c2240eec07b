#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "backends/cuda/launch.cuh"
#include "backends/cuda/matvec_bulk.cuh"
#include "backends/cuda/matvec_mma.cuh"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/quant.cuh"
#include "backends/cuda/stream_k.cuh"

namespace pyresa::cuda {

namespace {

// ---- layouts ---------------------------------------------------------------------------------

constexpr int kQ6Ql = 128, kQ6Qh = 64, kQ6Sc = 16;

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Q6_K planes of a matrix with nblk = rows * blocks_per_row blocks.
struct Q6Planes {
  const uint8_t* ql;
  const uint8_t* qh;
  const int8_t* sc;
  const uint16_t* d;
};
__host__ __device__ inline Q6Planes q6_planes(const uint8_t* base, int64_t nblk) {
  Q6Planes p;
  p.ql = base;
  p.qh = base + nblk * kQ6Ql;
  p.sc = reinterpret_cast<const int8_t*>(base + nblk * (kQ6Ql + kQ6Qh));
  p.d = reinterpret_cast<const uint16_t*>(base + nblk * (kQ6Ql + kQ6Qh + kQ6Sc));
  return p;
}

// Activation row planes: quants first, then the per-block scale fields.
struct ActLayout {
  int64_t nb;       // blocks
  size_t d_off;     // Q8_0/Q8_1: fp16 d[nb]; Q8_K: float d[nb]
  size_t s_off;     // Q8_1: fp16 s[nb]
  size_t bsum_off;  // Q8_K: int16 bsums[nb][16]
};
__host__ __device__ inline ActLayout act_layout(GgmlType t, int64_t cols) {
  ActLayout l{};
  if (t == GgmlType::Q8_K) {
    l.nb = cols / QK_K;
    l.d_off = cols;
    l.bsum_off = cols + 4 * l.nb;
  } else {
    l.nb = cols / 32;
    l.d_off = cols;
    l.s_off = cols + 2 * l.nb;
  }
  return l;
}

// Bytes of a Q8_K activation row (act_row_bytes(Q8_K, cols), usable on the device).
__host__ __device__ inline size_t act_row_bytes_q8k_dev(int64_t cols) { return align16(cols + 36 * (cols / QK_K)); }

// ---- small device helpers -------------------------------------------------------------------

__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t* p) {  // 2-byte aligned 32-bit load
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}
__device__ __forceinline__ uint16_t ld_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
// Bits 0..3 of x moved to bit 4 of bytes 0..3.
__device__ __forceinline__ int spread_bit4(uint32_t x) {
  return (int)(((x & 1u) | ((x & 2u) << 7) | ((x & 4u) << 14) | ((x & 8u) << 21)) << 4);
}

// Q4_K/Q5_K scales: header words w0 (scale bytes 0-3), w1 (4-7), w2 (8-11).
__device__ __forceinline__ void q4k_scale_min(uint32_t w0, uint32_t w1, uint32_t w2, int j, int& sc, int& m) {
  const uint32_t sc_w = j < 4 ? (w0 & 0x3f3f3f3fu) : ((w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u));
  const uint32_t m_w = j < 4 ? (w1 & 0x3f3f3f3fu) : (((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u));
  sc = (sc_w >> (8 * (j & 3))) & 0xff;
  m = (m_w >> (8 * (j & 3))) & 0xff;
}

// 16 weight bytes of a K-quant sub-block pair as two sets of 4 packed int8x4 operands for dp4a
// (low and high nibbles). Shared by the one-row and the rows-per-warp matvec kernels.
// Q6_K: 4 low bits from ql, 2 high bits from qh at shift 2*k2 (low) / 2*k2 + 4 (high).
__device__ __forceinline__ void q6k_unpack(const uint32_t ql[4], const uint32_t qh[4], int k2, int wlo[4], int whi[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    wlo[i] = (int)((ql[i] & 0x0f0f0f0fu) | (((qh[i] >> (2 * k2)) & 0x03030303u) << 4));
    whi[i] = (int)(((ql[i] >> 4) & 0x0f0f0f0fu) | (((qh[i] >> (2 * k2 + 4)) & 0x03030303u) << 4));
  }
}

// Q4_K: the two nibbles.
__device__ __forceinline__ void q4k_unpack(const uint32_t qs[4], int wlo[4], int whi[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    wlo[i] = (int)(qs[i] & 0x0f0f0f0fu);
    whi[i] = (int)((qs[i] >> 4) & 0x0f0f0f0fu);
  }
}

// Q5_K: the nibbles plus the fifth bit from qh at shift 2*c (low) / 2*c + 1 (high).
__device__ __forceinline__ void q5k_unpack(const uint32_t qs[4], const uint32_t qh[4], int c, int wlo[4], int whi[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    wlo[i] = (int)((qs[i] & 0x0f0f0f0fu) | (((qh[i] >> (2 * c)) & 0x01010101u) << 4));
    whi[i] = (int)(((qs[i] >> 4) & 0x0f0f0f0fu) | (((qh[i] >> (2 * c + 1)) & 0x01010101u) << 4));
  }
}

// ---- activation preparation ------------------------------------------------------------------

// silu(x) * u, as the CPU computes it (shared by prepare_kernel and the gate+up epilogue).
__device__ __forceinline__ float swiglu_value(float x, float u) {
  return __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u);
}

template <ActTransform T>
__device__ __forceinline__ float act_value(const ActPrep& p, const float* xr, const float* ur, int64_t i, float scale) {
  const float x = xr[i];
  if constexpr (T == ActTransform::RmsNorm) return __fmul_rn(__fmul_rn(x, scale), p.norm_w[i]);
  if constexpr (T == ActTransform::SwiGLU) return swiglu_value(x, ur[i]);
  return x;
}

// One 256-element Q8_K block b of a row (o: the row's planes), one warp, lane holding elements
// 8*lane .. 8*lane+7 in v: the CPU's quantize_row_q8_K (amax by absolute value, the first such
// element's signed value sets the scale). Shared by prepare_kernel and the products that
// quantize their own activations (matvec_rows_prep_kernel), so both write the same bytes.
__device__ __forceinline__ void quantize_q8k_block(const float v[8], int lane, int64_t b, const ActLayout& l,
                                                   uint8_t* o) {
  int amax_bits = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax_bits = max(amax_bits, (int)(__float_as_uint(v[i]) & 0x7fffffffu));
  amax_bits = __reduce_max_sync(0xffffffffu, (unsigned)amax_bits);
  int first = 256;
  float first_v = 0.0f;
#pragma unroll
  for (int i = 7; i >= 0; --i)
    if ((int)(__float_as_uint(v[i]) & 0x7fffffffu) == amax_bits) { first = 8 * lane + i; first_v = v[i]; }
  const int first_all = __reduce_min_sync(0xffffffffu, (unsigned)first);
  float vmax = __shfl_sync(0xffffffffu, first_v, (first_all & 255) >> 3);
  if (amax_bits == 0) vmax = 0.0f;
  const float iscale = vmax == 0.0f ? 0.0f : -127.0f / vmax;
  int qsum = 0;
  uint32_t packed[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int q = __float2int_rn(iscale * v[i]);
    qsum += q;
    packed[i >> 2] |= (uint32_t)(q & 0xff) << (8 * (i & 3));
  }
  reinterpret_cast<uint2*>(o)[(b * QK_K) / 8 + lane] = make_uint2(packed[0], packed[1]);
  qsum += __shfl_xor_sync(0xffffffffu, qsum, 1);  // groups of 16 = lane pairs
  if ((lane & 1) == 0) reinterpret_cast<int16_t*>(o + l.bsum_off)[b * 16 + lane / 2] = (int16_t)qsum;
  if (lane == 0) reinterpret_cast<float*>(o + l.d_off)[b] = vmax == 0.0f ? 0.0f : 1.0f / iscale;
}

// RMS-norm scale from the row's sum of squares (float products summed in double, as the CPU).
__device__ __forceinline__ float rms_scale(double sum_sq, int64_t cols, float eps) {
  return 1.0f / sqrtf((float)(sum_sq / (double)cols) + eps);
}

constexpr int kPrepWarps = 8;  // blocks per CTA (one per warp); a row spreads over gridDim.y CTAs

template <ActTransform T, GgmlType A>
__global__ void __launch_bounds__(32 * kPrepWarps) prepare_kernel(ActPrep p, int64_t cols, uint8_t* out,
                                                                   size_t out_row_bytes) {
  pdl_trigger();  // the next kernel (a product) may start prefetching its weights now
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int row = blockIdx.x;
  const float* xr = p.x + row * p.ld_x;
  const float* ur = T == ActTransform::SwiGLU ? p.up + row * p.ld_x : nullptr;
  uint8_t* o = out + row * out_row_bytes;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  float scale = 1.0f;
  if constexpr (T == ActTransform::RmsNorm) {
    __shared__ double partial[32];
    double s = 0.0;  // float products summed in double, as the CPU does
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += (double)(xr[i] * xr[i]);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) partial[warp] = s;
    __syncthreads();
    if (warp == 0) {
      s = lane < n_warps ? partial[lane] : 0.0;
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0) partial[0] = s;
    }
    __syncthreads();
    scale = rms_scale(partial[0], cols, p.eps);
  }
  const int64_t b = (int64_t)blockIdx.y * n_warps + warp;  // this warp's block
  if constexpr (A == GgmlType::F32 || A == GgmlType::F16) {
    const int64_t i = b * 32 + lane;
    if (i < cols) {
      const float v = act_value<T>(p, xr, ur, i, scale);
      if constexpr (A == GgmlType::F32) {
        reinterpret_cast<float*>(o)[i] = v;
      } else {
        const __half h = __float2half_rn(v);
        reinterpret_cast<__half*>(o)[i] = h;
        if (p.f16_overflow && __hisinf(h) && isfinite(v)) *p.f16_overflow = 1;
      }
    }
  } else if constexpr (A == GgmlType::Q8_0 || A == GgmlType::Q8_1) {
    const ActLayout l = act_layout(A, cols);
    if (b < l.nb) {
      const float v = act_value<T>(p, xr, ur, b * 32 + lane, scale);
      const float amax = warp_max(fabsf(v));
      const float d = amax / 127.0f;
      const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
      int q = __float2int_rn(v * inv);
      q = max(-127, min(127, q));
      reinterpret_cast<int8_t*>(o)[b * 32 + lane] = (int8_t)q;
      const int sum = __reduce_add_sync(0xffffffffu, q);
      if (lane == 0) {
        reinterpret_cast<uint16_t*>(o + l.d_off)[b] = f2h(d);
        if constexpr (A == GgmlType::Q8_1) reinterpret_cast<uint16_t*>(o + l.s_off)[b] = f2h(d * (float)sum);
      }
    }
  } else {  // Q8_K: lane holds elements 8*lane .. 8*lane+7 of a 256-block
    const ActLayout l = act_layout(A, cols);
    if (b < l.nb) {
      float v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = act_value<T>(p, xr, ur, b * QK_K + 8 * lane + i, scale);
      quantize_q8k_block(v, lane, b, l, o);
    }
  }
}

template <ActTransform T>
void launch_prepare(const ActPrep& p, GgmlType a, int n_rows, int64_t cols, void* out, size_t rb, cudaStream_t s) {
  auto* o = static_cast<uint8_t*>(out);
  const int threads = 32 * kPrepWarps;
  const int64_t block = a == GgmlType::Q8_K ? QK_K : 32;
  const dim3 grid(n_rows, ceil_div((cols + block - 1) / block, kPrepWarps));
  switch (a) {
    case GgmlType::F32: launch(prepare_kernel<T, GgmlType::F32>, grid, threads, 0, s, p, cols, o, rb); break;
    case GgmlType::F16: launch(prepare_kernel<T, GgmlType::F16>, grid, threads, 0, s, p, cols, o, rb); break;
    case GgmlType::Q8_0: launch(prepare_kernel<T, GgmlType::Q8_0>, grid, threads, 0, s, p, cols, o, rb); break;
    case GgmlType::Q8_1: launch(prepare_kernel<T, GgmlType::Q8_1>, grid, threads, 0, s, p, cols, o, rb); break;
    case GgmlType::Q8_K: launch(prepare_kernel<T, GgmlType::Q8_K>, grid, threads, 0, s, p, cols, o, rb); break;
    default: throw std::invalid_argument("prepare_activations: unsupported activation format");
  }
  PYRESA_CUDA_LAUNCH_CHECK();
}

// ---- matrix-vector products --------------------------------------------------------------------
// One warp per weight row. K-quants: 8 lanes per 256-superblock (4 superblocks per warp step);
// legacy: 4 lanes per 32-block (8 blocks per step); float: lanes stride over elements.
// Each lane accumulates NT tokens; integer sums are reduced inside the lane group before the
// float scaling, so each block's float term is the CPU's.

constexpr int kRowsPerCta = 4;

// Up to three weights of one type applied to the same activations in one launch (q, k, v; gate,
// up): CTAs [0, first[1]) work on weight 0, [first[1], first[2]) on weight 1, and so on.
struct MatvecBatch {
  DeviceWeight w[3];
  MatvecOut out[3];
  int first[3] = {0, 0, 0};  // first CTA (item) of each weight
  int n = 1;
  int n_items = 0;  // matvec_rows_kernel: CTA items in all (its grid may be smaller)
  int prefetch = 2;  // L2 prefetch of the rows (matvec_prefetch()): 0 none, 1 not Q6_K, 2 all
  int w1_from = 3;   // matvec_rows_prep_kernel<W0, W1>: weights [w1_from, n) are of type W1
};

template <GgmlType W, int NT>
__global__ void __launch_bounds__(32 * kRowsPerCta) matvec_kernel(MatvecBatch batch, const uint8_t* act, size_t arb,
                                                                  int n_tokens) {
  const int lane = threadIdx.x & 31;
  const int wi = (batch.n > 2 && (int)blockIdx.x >= batch.first[2]) ? 2
               : (batch.n > 1 && (int)blockIdx.x >= batch.first[1]) ? 1 : 0;
  const DeviceWeight& w = batch.w[wi];
  const MatvecOut& out = batch.out[wi];
  const int64_t row = (int64_t)(blockIdx.x - batch.first[wi]) * kRowsPerCta + (threadIdx.x >> 5);
  // The weights do not depend on the previous kernel: start pulling this row into L2 while it
  // finishes (PDL), then wait for the activations.
  if (row < w.rows && W != GgmlType::Q6_K)
    for (int64_t off = (int64_t)lane * 128; off < (int64_t)w.row_bytes; off += 32 * 128)
      prefetch_l2(w.data + row * w.row_bytes + off);
  pdl_trigger();
  pdl_wait();
  if (row >= w.rows) return;
  float acc[NT], acc_m[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = acc_m[t] = 0.0f;
  const int64_t cols = w.cols;

  if constexpr (W == GgmlType::F32 || W == GgmlType::F16 || W == GgmlType::BF16) {
    for (int64_t c = lane; c < cols; c += 32) {
      float wv;
      if constexpr (W == GgmlType::F32) wv = reinterpret_cast<const float*>(w.data + row * w.row_bytes)[c];
      else if constexpr (W == GgmlType::F16) wv = h2f(reinterpret_cast<const uint16_t*>(w.data + row * w.row_bytes)[c]);
      else wv = bf2f(reinterpret_cast<const uint16_t*>(w.data + row * w.row_bytes)[c]);
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (t < n_tokens) acc[t] = fmaf(wv, reinterpret_cast<const float*>(act + t * arb)[c], acc[t]);
    }
  } else if constexpr (W == GgmlType::Q4_K || W == GgmlType::Q5_K || W == GgmlType::Q6_K) {
    const int64_t nb = cols / QK_K;
    const int j = lane & 7;
    const ActLayout al = act_layout(GgmlType::Q8_K, cols);
    for (int64_t b0 = 0; b0 < nb; b0 += 4) {
      // All 32 lanes run every iteration (the group sums below shuffle across the warp); lanes
      // past the row's last block compute on block 0 and discard the result.
      const bool valid = b0 + (lane >> 3) < nb;
      const int64_t b = valid ? b0 + (lane >> 3) : 0;
      int qa_lo_off, qa_hi_off, g_lo, g_hi;
      int wlo[4], whi[4];
      int sc_lo = 0, sc_hi = 0, m_lo = 0, m_hi = 0;
      float d = 0.0f, dmin = 0.0f;
      if constexpr (W == GgmlType::Q6_K) {
        const Q6Planes pl = q6_planes(w.data, w.rows * nb);
        const int64_t blk = row * nb + b;
        const int h = j >> 2, k2 = (j >> 1) & 1, lh = j & 1;
        const uint4 ql = *reinterpret_cast<const uint4*>(pl.ql + blk * kQ6Ql + 64 * h + 32 * k2 + 16 * lh);
        const uint4 qh = *reinterpret_cast<const uint4*>(pl.qh + blk * kQ6Qh + 32 * h + 16 * lh);
        const uint32_t qlw[4] = {ql.x, ql.y, ql.z, ql.w}, qhw[4] = {qh.x, qh.y, qh.z, qh.w};
        q6k_unpack(qlw, qhw, k2, wlo, whi);
        g_lo = 8 * h + 2 * k2 + lh;
        g_hi = g_lo + 4;
        sc_lo = pl.sc[blk * kQ6Sc + g_lo];
        sc_hi = pl.sc[blk * kQ6Sc + g_hi];
        d = h2f(pl.d[blk]);
        qa_lo_off = 128 * h + 32 * k2 + 16 * lh;
        qa_hi_off = qa_lo_off + 64;
      } else {
        const uint8_t* blk = w.data + row * w.row_bytes + b * (W == GgmlType::Q4_K ? 144 : 176);
        const uint4 hdr = *reinterpret_cast<const uint4*>(blk);
        const int c = j >> 1, hh = j & 1;
        const uint4 qs = *reinterpret_cast<const uint4*>(blk + (W == GgmlType::Q4_K ? 16 : 48) + 32 * c + 16 * hh);
        const uint32_t qsw[4] = {qs.x, qs.y, qs.z, qs.w};
        if constexpr (W == GgmlType::Q4_K) {
          q4k_unpack(qsw, wlo, whi);
        } else {
          const uint4 qh = *reinterpret_cast<const uint4*>(blk + 16 + 16 * hh);
          const uint32_t qhw[4] = {qh.x, qh.y, qh.z, qh.w};
          q5k_unpack(qsw, qhw, c, wlo, whi);
        }
        q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * c, sc_lo, m_lo);
        q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * c + 1, sc_hi, m_hi);
        d = h2f((uint16_t)(hdr.x & 0xffff));
        dmin = h2f((uint16_t)(hdr.x >> 16));
        qa_lo_off = 64 * c + 16 * hh;
        qa_hi_off = qa_lo_off + 32;
        g_lo = 4 * c + hh;
        g_hi = g_lo + 2;
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t >= n_tokens) break;
        const uint8_t* a = act + t * arb;
        const int8_t* aq = reinterpret_cast<const int8_t*>(a) + b * QK_K;
        const uint4 alo = *reinterpret_cast<const uint4*>(aq + qa_lo_off);
        const uint4 ahi = *reinterpret_cast<const uint4*>(aq + qa_hi_off);
        int dlo = 0, dhi = 0;
        dlo = __dp4a(wlo[0], (int)alo.x, dlo);
        dlo = __dp4a(wlo[1], (int)alo.y, dlo);
        dlo = __dp4a(wlo[2], (int)alo.z, dlo);
        dlo = __dp4a(wlo[3], (int)alo.w, dlo);
        dhi = __dp4a(whi[0], (int)ahi.x, dhi);
        dhi = __dp4a(whi[1], (int)ahi.y, dhi);
        dhi = __dp4a(whi[2], (int)ahi.z, dhi);
        dhi = __dp4a(whi[3], (int)ahi.w, dhi);
        const int16_t* bs = reinterpret_cast<const int16_t*>(a + al.bsum_off) + b * 16;
        const float ad = reinterpret_cast<const float*>(a + al.d_off)[b];
        // Each lane scales its own share of the superblock's integer sums (no shuffles in the
        // loop); the CPU scales the whole superblock's sums at once, so only float rounding differs.
        if constexpr (W == GgmlType::Q6_K) {
          const int sq = sc_lo * (dlo - 32 * bs[g_lo]) + sc_hi * (dhi - 32 * bs[g_hi]);
          if (valid) acc[t] += __fmul_rn(__fmul_rn(ad, d), (float)sq);
        } else {
          const int sq = sc_lo * dlo + sc_hi * dhi;
          const int sm = m_lo * bs[g_lo] + m_hi * bs[g_hi];
          if (valid) acc[t] += __fmul_rn(ad, __fsub_rn(__fmul_rn(d, (float)sq), __fmul_rn(dmin, (float)sm)));
        }
      }
    }
  } else {  // legacy 32-element blocks, 4 lanes per block
    constexpr int kBytes = W == GgmlType::Q4_0 ? 18 : W == GgmlType::Q4_1 ? 20 : W == GgmlType::Q5_0 ? 22
                         : W == GgmlType::Q5_1 ? 24 : 34;
    const int64_t nb = cols / 32;
    const int sub = lane & 3;
    const ActLayout al = act_layout(W == GgmlType::Q4_1 || W == GgmlType::Q5_1 ? GgmlType::Q8_1 : GgmlType::Q8_0, cols);
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
      const bool valid = b0 + (lane >> 2) < nb;  // as above: every lane iterates
      const int64_t b = valid ? b0 + (lane >> 2) : 0;
      const uint8_t* blk = w.data + row * w.row_bytes + b * kBytes;
      const float wd = h2f(ld_u16(blk));
      float wm = 0.0f;
      int w0, w1;  // W == Q8_0: elements 8sub..8sub+7; nibble formats: 4sub..+3 and 16+4sub..+3
      if constexpr (W == GgmlType::Q8_0) {
        w0 = (int)ld_u32_a2(blk + 2 + 8 * sub);
        w1 = (int)ld_u32_a2(blk + 6 + 8 * sub);
      } else {
        constexpr int qs_off = W == GgmlType::Q4_0 ? 2 : W == GgmlType::Q4_1 ? 4 : W == GgmlType::Q5_0 ? 6 : 8;
        const uint32_t q = ld_u32_a2(blk + qs_off + 4 * sub);
        w0 = (int)(q & 0x0f0f0f0fu);
        w1 = (int)((q >> 4) & 0x0f0f0f0fu);
        if constexpr (W == GgmlType::Q5_0 || W == GgmlType::Q5_1) {
          const uint32_t qh = ld_u32_a2(blk + (W == GgmlType::Q5_0 ? 2 : 4));
          w0 |= spread_bit4((qh >> (4 * sub)) & 0xfu);
          w1 |= spread_bit4((qh >> (16 + 4 * sub)) & 0xfu);
        }
        if constexpr (W == GgmlType::Q4_1 || W == GgmlType::Q5_1) wm = h2f(ld_u16(blk + 2));
        // Q4_0 stores q + 8, Q5_0 q + 16: subtract per byte (values then fit int8).
        if constexpr (W == GgmlType::Q4_0) { w0 = (int)__vsub4(w0, 0x08080808u); w1 = (int)__vsub4(w1, 0x08080808u); }
        if constexpr (W == GgmlType::Q5_0) { w0 = (int)__vsub4(w0, 0x10101010u); w1 = (int)__vsub4(w1, 0x10101010u); }
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t >= n_tokens) break;
        const uint8_t* a = act + t * arb;
        const int8_t* aq = reinterpret_cast<const int8_t*>(a) + b * 32;
        int a0, a1;
        if constexpr (W == GgmlType::Q8_0) {
          const uint2 v = *reinterpret_cast<const uint2*>(aq + 8 * sub);
          a0 = (int)v.x;
          a1 = (int)v.y;
        } else {
          a0 = *reinterpret_cast<const int*>(aq + 4 * sub);
          a1 = *reinterpret_cast<const int*>(aq + 16 + 4 * sub);
        }
        int isum = __dp4a(w0, a0, 0);
        isum = __dp4a(w1, a1, isum);
        if (valid) {
          const float ad = h2f(reinterpret_cast<const uint16_t*>(a + al.d_off)[b]);
          acc[t] += __fmul_rn(__fmul_rn(wd, ad), (float)isum);
          if constexpr (W == GgmlType::Q4_1 || W == GgmlType::Q5_1)
            if (sub == 0) acc_m[t] += __fmul_rn(wm, h2f(reinterpret_cast<const uint16_t*>(a + al.s_off)[b]));
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (t >= n_tokens) break;
    const float v = warp_sum(acc[t]) + warp_sum(acc_m[t]);
    if (lane == 0) {
      float* y = out.y + t * out.ldy + row;
      float r = out.bias ? v + out.bias[row] : v;
      *y = out.accumulate ? *y + r : r;
    }
  }
}


// ---- matrix-vector products, one token, several rows per warp (K-quants) -------------------
// The decode step's products: each warp works on R consecutive rows and issues the loads of all
// R rows' blocks of a step (and the step's activations, shared by the R rows) before any
// arithmetic, so R times the bytes are in flight per warp. Per row, each lane does exactly what
// matvec_kernel<W, 1> does (same blocks, same integer sums, same float operations in the same
// order, same warp reduction), so the results are bit-identical to it.

__device__ __forceinline__ uint4 ld_stream16(const void* p) {  // weights: read once, skip L1
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Which weight of a batch CTA item `item` works on (items [first[i], first[i+1]) are weight i's).
__device__ __forceinline__ int batch_weight(const MatvecBatch& b, int item) {
  return (b.n > 2 && item >= b.first[2]) ? 2 : (b.n > 1 && item >= b.first[1]) ? 1 : 0;
}

// Rows [row0, row0 + R) of w into L2 by bulk prefetches (one lane calls it). Q6_K: its ql, qh and
// scale planes (the 2-byte d plane is not 16-byte aligned per row; it is read directly).
template <GgmlType W, int R>
__device__ __forceinline__ void prefetch_rows(const DeviceWeight& w, int64_t row0, int mode) {
  if (row0 >= w.rows || mode == 0 || (W == GgmlType::Q6_K && mode < 2)) return;
  const int64_t nr = w.rows - row0 < R ? w.rows - row0 : R;
  if constexpr (W == GgmlType::Q6_K) {
    const int64_t nb = w.cols / QK_K;
    const Q6Planes pl = q6_planes(w.data, w.rows * nb);
    prefetch_l2_bulk(pl.ql + row0 * nb * kQ6Ql, (uint32_t)(nr * nb * kQ6Ql));
    prefetch_l2_bulk(pl.qh + row0 * nb * kQ6Qh, (uint32_t)(nr * nb * kQ6Qh));
    prefetch_l2_bulk(pl.sc + row0 * nb * kQ6Sc, (uint32_t)(nr * nb * kQ6Sc));
  } else {
    prefetch_l2_bulk(w.data + row0 * w.row_bytes, (uint32_t)(nr * w.row_bytes));
  }
}

// A CTA item = kRowsPerCta warps x R rows. With one CTA per item (grid = n_items) each CTA does
// one item, as before. With a capped grid (persistent: a few CTAs per SM, PYRESA_CUDA_MATVEC_
// CTAS_PER_SM) each CTA loops over items gridDim.x apart: no waves, no per-CTA launch ramp, and
// while it works on one item each warp bulk-prefetches its rows of the next into L2, so the
// DRAM reads of item i+1 overlap the loads and arithmetic of item i (a prefetch costs no
// registers, unlike a second set of loads in flight). The early PDL trigger comes when the CTA
// starts its last item, so the next kernel's CTAs fill the SMs only during this one's tail.
// S > 1 (K split): S consecutive warps share a row group, each taking every S-th step of the row
// (an item is then kRowsPerCta / S row groups); the body sums the S partial results.
template <GgmlType W, int R, int S = 1, class Body>
__device__ __forceinline__ void for_each_item(const MatvecBatch& batch, Body&& body) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_items = batch.n_items;
  auto item_row0 = [&](int it, int wi) {
    return ((int64_t)(it - batch.first[wi]) * (kRowsPerCta / S) + warp / S) * R;
  };
  // The weights do not depend on the previous kernel: start pulling the first item's rows into
  // L2 while it finishes (PDL), then wait for the activations.
  if (lane == 0 && warp % S == 0 && (int)blockIdx.x < n_items) {
    const int wi = batch_weight(batch, blockIdx.x);
    prefetch_rows<W, R>(batch.w[wi], item_row0(blockIdx.x, wi), batch.prefetch);
  }
  if ((int)(blockIdx.x + gridDim.x) >= n_items) pdl_trigger();
  pdl_wait();
  for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int next = item + gridDim.x;
    if (next < n_items) {
      if (lane == 0 && warp % S == 0) {
        const int wn = batch_weight(batch, next);
        prefetch_rows<W, R>(batch.w[wn], item_row0(next, wn), batch.prefetch);
      }
      if (next + (int)gridDim.x >= n_items) pdl_trigger();  // the next item is this CTA's last
    }
    const int wi = batch_weight(batch, item);
    const int64_t row0 = item_row0(item, wi);
    // (with S > 1 the body synchronises the CTA: every row group of an item must be in range)
    if (S > 1 || row0 < batch.w[wi].rows) body(batch.w[wi], batch.out[wi], row0);
  }
}

// One item's rows [row0, row0 + R) of one warp (or, S > 1, of the CTA's S warps, partial sums
// in part[S][R]); act: the Q8_K activation row's planes, in global or shared memory.
template <GgmlType W, int R, int U, int S>
__device__ __forceinline__ void rows_item(const DeviceWeight& w, const MatvecOut& out, int64_t row0,
                                          const uint8_t* act, float (*part)[R]) {
  static_assert(W == GgmlType::Q4_K || W == GgmlType::Q5_K || W == GgmlType::Q6_K, "K-quants only");
  static_assert(S == 1 || S == kRowsPerCta, "K split: the whole CTA on one row group");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  {
    int64_t rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = row0 + r < w.rows ? row0 + r : w.rows - 1;  // past the end: recompute the last row, discard
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    const int64_t cols = w.cols;
    const int64_t nb = cols / QK_K;
    const int j = lane & 7;
    const ActLayout al = act_layout(GgmlType::Q8_K, cols);
    const Q6Planes pl = q6_planes(w.data, w.rows * nb);
    for (int64_t b00 = 4 * U * (warp % S); b00 < nb; b00 += 4 * U * S) {
      // 1. every load of U steps: R rows' blocks per step, then the steps' activations.
      uint4 va[U][R], vb[U][R], vc[U][R];
      int s6lo[U][R], s6hi[U][R];
      uint16_t d6[U][R];
      uint4 alo[U], ahi[U];
      int bs_lo[U], bs_hi[U];
      float ad[U];
      bool valid[U];
      int qa_lo_off, qa_hi_off, g_lo, g_hi;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t b0 = b00 + 4 * u;
        valid[u] = b0 + (lane >> 3) < nb;
        const int64_t b = valid[u] ? b0 + (lane >> 3) : 0;
        if constexpr (W == GgmlType::Q6_K) {
          const int h = j >> 2, k2 = (j >> 1) & 1, lh = j & 1;
          g_lo = 8 * h + 2 * k2 + lh;
          g_hi = g_lo + 4;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int64_t blk = rows[r] * nb + b;
            va[u][r] = ld_stream16(pl.ql + blk * kQ6Ql + 64 * h + 32 * k2 + 16 * lh);
            vb[u][r] = ld_stream16(pl.qh + blk * kQ6Qh + 32 * h + 16 * lh);
            s6lo[u][r] = pl.sc[blk * kQ6Sc + g_lo];
            s6hi[u][r] = pl.sc[blk * kQ6Sc + g_hi];
            d6[u][r] = pl.d[blk];
          }
          qa_lo_off = 128 * h + 32 * k2 + 16 * lh;
          qa_hi_off = qa_lo_off + 64;
        } else {
          const int c = j >> 1, hh = j & 1;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const uint8_t* blk = w.data + rows[r] * w.row_bytes + b * (W == GgmlType::Q4_K ? 144 : 176);
            va[u][r] = ld_stream16(blk);
            vb[u][r] = ld_stream16(blk + (W == GgmlType::Q4_K ? 16 : 48) + 32 * c + 16 * hh);
            if constexpr (W == GgmlType::Q5_K) vc[u][r] = ld_stream16(blk + 16 + 16 * hh);
          }
          qa_lo_off = 64 * c + 16 * hh;
          qa_hi_off = qa_lo_off + 32;
          g_lo = 4 * c + hh;
          g_hi = g_lo + 2;
        }
        const int8_t* aq = reinterpret_cast<const int8_t*>(act) + b * QK_K;
        alo[u] = *reinterpret_cast<const uint4*>(aq + qa_lo_off);
        ahi[u] = *reinterpret_cast<const uint4*>(aq + qa_hi_off);
        const int16_t* bs = reinterpret_cast<const int16_t*>(act + al.bsum_off) + b * 16;
        bs_lo[u] = bs[g_lo];
        bs_hi[u] = bs[g_hi];
        ad[u] = reinterpret_cast<const float*>(act + al.d_off)[b];
      }
      // 2. the arithmetic, step by step and row by row, as matvec_kernel does it.
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        int wlo[4], whi[4];
        int sc_lo = 0, sc_hi = 0, m_lo = 0, m_hi = 0;
        float d = 0.0f, dmin = 0.0f;
        if constexpr (W == GgmlType::Q6_K) {
          const int k2 = (j >> 1) & 1;
          const uint32_t qlw[4] = {va[u][r].x, va[u][r].y, va[u][r].z, va[u][r].w};
          const uint32_t qhw[4] = {vb[u][r].x, vb[u][r].y, vb[u][r].z, vb[u][r].w};
          q6k_unpack(qlw, qhw, k2, wlo, whi);
          sc_lo = s6lo[u][r];
          sc_hi = s6hi[u][r];
          d = h2f(d6[u][r]);
        } else {
          const int c = j >> 1;
          const uint4 hdr = va[u][r];
          const uint32_t qsw[4] = {vb[u][r].x, vb[u][r].y, vb[u][r].z, vb[u][r].w};
          if constexpr (W == GgmlType::Q4_K) {
            q4k_unpack(qsw, wlo, whi);
          } else {
            const uint32_t qhw[4] = {vc[u][r].x, vc[u][r].y, vc[u][r].z, vc[u][r].w};
            q5k_unpack(qsw, qhw, c, wlo, whi);
          }
          q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * c, sc_lo, m_lo);
          q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * c + 1, sc_hi, m_hi);
          d = h2f((uint16_t)(hdr.x & 0xffff));
          dmin = h2f((uint16_t)(hdr.x >> 16));
        }
        int dlo = 0, dhi = 0;
        dlo = __dp4a(wlo[0], (int)alo[u].x, dlo);
        dlo = __dp4a(wlo[1], (int)alo[u].y, dlo);
        dlo = __dp4a(wlo[2], (int)alo[u].z, dlo);
        dlo = __dp4a(wlo[3], (int)alo[u].w, dlo);
        dhi = __dp4a(whi[0], (int)ahi[u].x, dhi);
        dhi = __dp4a(whi[1], (int)ahi[u].y, dhi);
        dhi = __dp4a(whi[2], (int)ahi[u].z, dhi);
        dhi = __dp4a(whi[3], (int)ahi[u].w, dhi);
        if constexpr (W == GgmlType::Q6_K) {
          const int sq = sc_lo * (dlo - 32 * bs_lo[u]) + sc_hi * (dhi - 32 * bs_hi[u]);
          if (valid[u]) acc[r] += __fmul_rn(__fmul_rn(ad[u], d), (float)sq);
        } else {
          const int sq = sc_lo * dlo + sc_hi * dhi;
          const int sm = m_lo * bs_lo[u] + m_hi * bs_hi[u];
          if (valid[u]) acc[r] += __fmul_rn(ad[u], __fsub_rn(__fmul_rn(d, (float)sq), __fmul_rn(dmin, (float)sm)));
        }
      }
    }
    if constexpr (S > 1) {  // the S warps' partial sums, added in a fixed order
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float v = warp_sum(acc[r]);
        if (lane == 0) part[warp][r] = v;
      }
      __syncthreads();
      if (warp == 0 && lane < R && row0 + lane < w.rows) {
        float v = part[0][lane];
#pragma unroll
        for (int k = 1; k < S; ++k) v += part[k][lane];
        const int64_t row = row0 + lane;
        float* y = out.y + row;
        const float rr = out.bias ? v + out.bias[row] : v;
        *y = out.accumulate ? *y + rr : rr;
      }
      __syncthreads();  // part is reused by the next item
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float v = warp_sum(acc[r]) + 0.0f;  // matvec_kernel adds its (zero) acc_m sum
        if (lane == 0 && row0 + r < w.rows) {
          const int64_t row = row0 + r;
          float* y = out.y + row;
          float rr = out.bias ? v + out.bias[row] : v;
          *y = out.accumulate ? *y + rr : rr;
        }
      }
    }
  }
}

template <GgmlType W, int R, int U, int S = 1>
__global__ void __launch_bounds__(32 * kRowsPerCta) matvec_rows_kernel(MatvecBatch batch, const uint8_t* act) {
  __shared__ float part[S > 1 ? S : 1][R];
  for_each_item<W, R, S>(batch, [&](const DeviceWeight& w, const MatvecOut& out, int64_t row0) {
    rows_item<W, R, U, S>(w, out, row0, act, part);
  });
}


// ---- one token, activations prepared by the product's own CTAs (PYRESA_CUDA_FUSE_NORM) ------
// The decode step used to run prepare_kernel (RMS norm or plain copy + Q8_K quantization of one
// 3584-float row, 2 CTAs) before each product: a kernel boundary and a latency chain of ~5 us
// each, 3 per layer. Here every CTA of the product, once the previous kernel is done (its rows
// already on their way into L2), reads the float row from L2, normalises and quantizes it into
// shared memory with exactly prepare_kernel's arithmetic (same double-sum order, same block
// quantizer), and its dot products read the activations from there: the same bytes, so the
// products are bit-identical to prepare + matvec_rows_kernel<W, 2, 2>. The same kernel also takes
// weights of two types in one launch (W0 for weights [0, w1_from), W1 after: the Q4_K q/k and the
// Q6_K v of a Q4_K_M layer), with or without the folded preparation.
// Measured on the H100 (docs/perf-cuda.md, run 10-fixed-fuse): the fold is slower (+0.06 to +1 ms
// per step): every CTA reads the 14 KB float row and the 14 KB norm weights from L2 (q/k/v: 576
// CTAs x 28 KB = 16 MB, more than the product's 9.8 MB of weights; gate+up: 133 MB) and runs the
// norm's latency chain before its first dot product. Off by default; the two-type launch without
// it (the q/k/v of a layer in one launch, v first) is the default.

// The RMS norm's sum of squares as prepare_kernel forms it with its 256 threads (each a strided
// partial sum in double, a butterfly per warp, then warp 0 over the 8 warp sums), played by this
// CTA's 128 threads: thread t is prepare_kernel's threads t and t + 128, so every double addition
// happens in the same order and the scale is bit-identical. red: 9 doubles of shared memory.
__device__ __forceinline__ float cta_rms_scale(const float* xr, int64_t cols, float eps, double* red) {
  constexpr int kV = 32 * kPrepWarps, kT = 32 * kRowsPerCta;
  static_assert(kV == 2 * kT, "two of prepare_kernel's threads per thread");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double s0 = 0.0, s1 = 0.0;
  for (int64_t i = threadIdx.x; i < cols; i += kV) s0 += (double)(xr[i] * xr[i]);
  for (int64_t i = threadIdx.x + kT; i < cols; i += kV) s1 += (double)(xr[i] * xr[i]);
  for (int off = 16; off > 0; off >>= 1) {
    s0 += __shfl_xor_sync(0xffffffffu, s0, off);
    s1 += __shfl_xor_sync(0xffffffffu, s1, off);
  }
  if (lane == 0) {
    red[warp] = s0;
    red[warp + kRowsPerCta] = s1;
  }
  __syncthreads();
  if (warp == 0) {
    double s = lane < kPrepWarps ? red[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) red[kPrepWarps] = s;
  }
  __syncthreads();
  return rms_scale(red[kPrepWarps], cols, eps);
}

// Row 0 of p (transform T) as a Q8_K activation row into shared memory o (act_layout planes):
// warp w quantizes blocks w, w + 4, ... as prepare_kernel's warps do, one block each.
template <ActTransform T>
__device__ __forceinline__ void cta_prepare_q8k(const ActPrep& p, int64_t cols, uint8_t* o, double* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* xr = p.x;
  float scale = 1.0f;
  if constexpr (T == ActTransform::RmsNorm) scale = cta_rms_scale(xr, cols, p.eps, red);
  const ActLayout l = act_layout(GgmlType::Q8_K, cols);
  for (int64_t b = warp; b < l.nb; b += kRowsPerCta) {
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = act_value<T>(p, xr, nullptr, b * QK_K + 8 * lane + i, scale);
    quantize_q8k_block(v, lane, b, l, o);
  }
  __syncthreads();
}

// F: 0 the activations are given (act, global), 1 plain row quantized here, 2 RMS-normed row.
// act_dump (tests): CTA 0 copies its shared activation row there.
template <GgmlType W0, GgmlType W1, int R, int U, int F>
__global__ void __launch_bounds__(32 * kRowsPerCta) matvec_rows_prep_kernel(MatvecBatch batch, const uint8_t* act,
                                                                            ActPrep prep, uint8_t* act_dump) {
  extern __shared__ uint4 smem_act[];
  __shared__ double red[kPrepWarps + 1];
  __shared__ float part[1][R];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_items = batch.n_items;
  auto item_row0 = [&](int it, int wi) { return ((int64_t)(it - batch.first[wi]) * kRowsPerCta + warp) * R; };
  auto prefetch = [&](int it) {
    const int wi = batch_weight(batch, it);
    if (wi >= batch.w1_from) prefetch_rows<W1, R>(batch.w[wi], item_row0(it, wi), batch.prefetch);
    else prefetch_rows<W0, R>(batch.w[wi], item_row0(it, wi), batch.prefetch);
  };
  // The weights do not depend on the previous kernel: pull this CTA's first rows into L2 while it
  // finishes, then wait for the activations (as for_each_item).
  if (lane == 0 && (int)blockIdx.x < n_items) prefetch(blockIdx.x);
  if ((int)(blockIdx.x + gridDim.x) >= n_items) pdl_trigger();
  pdl_wait();
  const uint8_t* a = act;
  if constexpr (F != 0) {
    uint8_t* sa = reinterpret_cast<uint8_t*>(smem_act);
    const int64_t cols = batch.w[0].cols;
    cta_prepare_q8k<F == 1 ? ActTransform::Plain : ActTransform::RmsNorm>(prep, cols, sa, red);
    if (act_dump && blockIdx.x == 0) {
      const int n16 = (int)(act_row_bytes_q8k_dev(cols) / 16);
      for (int i = threadIdx.x; i < n16; i += blockDim.x) reinterpret_cast<uint4*>(act_dump)[i] = smem_act[i];
    }
    a = sa;
  }
  for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int next = item + gridDim.x;
    if (next < n_items) {
      if (lane == 0) prefetch(next);
      if (next + (int)gridDim.x >= n_items) pdl_trigger();  // the next item is this CTA's last
    }
    const int wi = batch_weight(batch, item);
    const int64_t row0 = item_row0(item, wi);
    if (row0 >= batch.w[wi].rows) continue;
    if constexpr (W0 == W1) {
      rows_item<W0, R, U, 1>(batch.w[wi], batch.out[wi], row0, a, part);
    } else {
      if (wi >= batch.w1_from) rows_item<W1, R, U, 1>(batch.w[wi], batch.out[wi], row0, a, part);
      else rows_item<W0, R, U, 1>(batch.w[wi], batch.out[wi], row0, a, part);
    }
  }
}

// ---- one token, gate + up with the SwiGLU + Q8_K quantization of the down product's input in
// the epilogue (PYRESA_CUDA_GLU_EPILOGUE) --------------------------------------------------------
// Q8_K block b of h = silu(gate) * up needs gate and up rows [256b, 256b + 256): 32 items of
// gate and 32 of up (8 rows each). Each item, once its rows are stored (and fenced), counts
// itself into block b's counter; the item that completes the count quantizes block b with one
// warp, exactly as prepare_kernel's warp for that block would (swiglu_value, quantize_q8k_block:
// the same bytes), and resets the counter for the next layer. The separate SwiGLU prepare kernel
// (a launch and a latency chain per layer) goes away; blocks finish while other items still run.
// Measured on the H100 (run 10-fixed-fuse): +0.18 ms per step, not the −0.05 predicted: the
// fence and the counter's atomic round trip hold each of gate+up's 4,736 CTAs (7 waves) longer
// than the whole prepare kernel costs. Off by default.
struct GluOut {
  int* counters;   // [n_ff / 256], zero between launches
  uint8_t* act;    // the down product's Q8_K input row (planes, act_layout(Q8_K, n_ff))
  int64_t n_ff;
};

template <GgmlType W, int R, int U>
__global__ void __launch_bounds__(32 * kRowsPerCta) matvec_rows_glu_kernel(MatvecBatch batch, const uint8_t* act,
                                                                           GluOut glu) {
  __shared__ float part[1][R];
  __shared__ int last_block;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kItemsPerBlock = 2 * QK_K / (kRowsPerCta * R);  // gate's and up's
  for_each_item<W, R, 1>(batch, [&](const DeviceWeight& w, const MatvecOut& out, int64_t row0) {
    rows_item<W, R, U, 1>(w, out, row0, act, part);
    if (lane == 0) __threadfence();  // this warp's stored outputs, visible before the count
    __syncthreads();
    if (threadIdx.x == 0) {
      const int b = (int)(row0 / QK_K);  // the item's 8 rows lie in one block
      const int done = atomicAdd(&glu.counters[b], 1);
      last_block = done == kItemsPerBlock - 1 ? b : -1;
    }
    __syncthreads();
    const int b = last_block;  // (rewritten only after the next item's first barrier)
    if (b >= 0 && warp == 0) {
      __threadfence();
      const float* g = batch.out[0].y + (int64_t)b * QK_K + 8 * lane;
      const float* u = batch.out[1].y + (int64_t)b * QK_K + 8 * lane;
      float v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = swiglu_value(__ldcg(g + i), __ldcg(u + i));  // (L2: other SMs' stores)
      quantize_q8k_block(v, lane, b, act_layout(GgmlType::Q8_K, glu.n_ff), glu.act);
      if (lane == 0) glu.counters[b] = 0;
    }
  });
}

// ---- one token, Q4_K, 4 lanes per superblock ("wide", PYRESA_CUDA_MATVEC_WIDE=1) -------------
// Nsight Compute on the 7B gate/up product (run 9): ALU pipe 66% busy, issue slots 58% busy at
// 63% of DRAM peak: the 8-lanes-per-superblock kernel spends ~67 instructions per 16 quant bytes
// per lane, a third of them decoding the header's 6-bit scales, which each of the 8 lanes does for
// its own pair of sub-blocks. Here each lane takes a whole 64-element chunk c of a superblock (32
// quant bytes: sub-blocks 2c and 2c+1), so the header is loaded and decoded once per 32 quant
// bytes, and the scale pair comes from three shifts and masks. A warp step covers 8 superblocks
// of R rows. Integer sums are exact; the float scaling groups two of the old lanes' terms, so the
// rounding (not the quantized arithmetic) differs from matvec_kernel, within the CPU-test bounds.

// Scales and mins of sub-blocks 2c and 2c+1 from the header words (see q4k_scale_min).
__device__ __forceinline__ void q4k_scale_min_pair(uint32_t w0, uint32_t w1, uint32_t w2, int c, int& sc_lo,
                                                   int& sc_hi, int& m_lo, int& m_hi) {
  const int sh = 16 * (c & 1);
  const uint32_t a = w0 >> sh, b = w1 >> sh, cc = w2 >> sh;
  const uint32_t scp = c < 2 ? (a & 0x3f3fu) : ((cc & 0x0f0fu) | ((a >> 2) & 0x3030u));
  const uint32_t mp = c < 2 ? (b & 0x3f3fu) : (((cc >> 4) & 0x0f0fu) | ((b >> 2) & 0x3030u));
  sc_lo = scp & 0xff;
  sc_hi = (scp >> 8) & 0xff;
  m_lo = mp & 0xff;
  m_hi = (mp >> 8) & 0xff;
}

template <int R, int U>
__global__ void __launch_bounds__(32 * kRowsPerCta) matvec_q4k_wide_kernel(MatvecBatch batch, const uint8_t* act) {
  const int lane = threadIdx.x & 31;
  const int c = lane & 3, sbl = lane >> 2;  // 64-element chunk, superblock within the step
  for_each_item<GgmlType::Q4_K, R>(batch, [&](const DeviceWeight& w, const MatvecOut& out, int64_t row0) {
    int64_t rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = row0 + r < w.rows ? row0 + r : w.rows - 1;  // past the end: discarded
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    const int64_t nb = w.cols / QK_K;
    const ActLayout al = act_layout(GgmlType::Q8_K, w.cols);
    for (int64_t b00 = 0; b00 < nb; b00 += 8 * U) {
      uint4 hdr[U][R], q0[U][R], q1[U][R];
      uint4 a0[U], a1[U], a2[U], a3[U];
      int bs_lo[U], bs_hi[U];
      float ad[U];
      bool valid[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t b0 = b00 + 8 * u;
        valid[u] = b0 + sbl < nb;
        const int64_t b = valid[u] ? b0 + sbl : 0;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint8_t* blk = w.data + rows[r] * w.row_bytes + b * 144;
          hdr[u][r] = ld_stream16(blk);
          q0[u][r] = ld_stream16(blk + 16 + 32 * c);
          q1[u][r] = ld_stream16(blk + 32 + 32 * c);
        }
        const uint4* aq = reinterpret_cast<const uint4*>(act + b * QK_K + 64 * c);
        a0[u] = aq[0];
        a1[u] = aq[1];
        a2[u] = aq[2];
        a3[u] = aq[3];
        // bsums of the four 16-element groups 4c .. 4c+3 (two 4-byte loads: the plane is 4-aligned)
        const uint32_t* bs = reinterpret_cast<const uint32_t*>(act + al.bsum_off + b * 32 + 8 * c);
        const uint32_t g01 = bs[0], g23 = bs[1];
        bs_lo[u] = (int)(int16_t)(g01 & 0xffff) + (int)(int16_t)(g01 >> 16);
        bs_hi[u] = (int)(int16_t)(g23 & 0xffff) + (int)(int16_t)(g23 >> 16);
        ad[u] = reinterpret_cast<const float*>(act + al.d_off)[b];
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint32_t qw[8] = {q0[u][r].x, q0[u][r].y, q0[u][r].z, q0[u][r].w,
                                q1[u][r].x, q1[u][r].y, q1[u][r].z, q1[u][r].w};
        const uint32_t alo[8] = {a0[u].x, a0[u].y, a0[u].z, a0[u].w, a1[u].x, a1[u].y, a1[u].z, a1[u].w};
        const uint32_t ahi[8] = {a2[u].x, a2[u].y, a2[u].z, a2[u].w, a3[u].x, a3[u].y, a3[u].z, a3[u].w};
        int dlo = 0, dhi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          dlo = __dp4a((int)(qw[i] & 0x0f0f0f0fu), (int)alo[i], dlo);
          dhi = __dp4a((int)((qw[i] >> 4) & 0x0f0f0f0fu), (int)ahi[i], dhi);
        }
        int sc_lo, sc_hi, m_lo, m_hi;
        q4k_scale_min_pair(hdr[u][r].y, hdr[u][r].z, hdr[u][r].w, c, sc_lo, sc_hi, m_lo, m_hi);
        const float d = h2f((uint16_t)(hdr[u][r].x & 0xffff));
        const float dmin = h2f((uint16_t)(hdr[u][r].x >> 16));
        const int sq = sc_lo * dlo + sc_hi * dhi;
        const int sm = m_lo * bs_lo[u] + m_hi * bs_hi[u];
        if (valid[u]) acc[r] += __fmul_rn(ad[u], __fsub_rn(__fmul_rn(d, (float)sq), __fmul_rn(dmin, (float)sm)));
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0 && row0 + r < w.rows) {
        const int64_t row = row0 + r;
        float* y = out.y + row;
        const float rr = out.bias ? v + out.bias[row] : v;
        *y = out.accumulate ? *y + rr : rr;
      }
    }
  });
}

// ---- dequantization ----------------------------------------------------------------------------
// Chunk = 32 consecutive elements of a row (a legacy block, a K-quant sub-block). Arithmetic as
// the CPU's scalar code: two roundings, no fused multiply-add, so the values agree bit for bit.

template <GgmlType W>
__device__ void dequant_chunk(const DeviceWeight& w, int64_t row, int64_t chunk, float* y) {
  const uint8_t* r = w.data + row * w.row_bytes;
  if constexpr (W == GgmlType::F32) {
    for (int i = 0; i < 32; ++i) y[i] = reinterpret_cast<const float*>(r)[chunk * 32 + i];
  } else if constexpr (W == GgmlType::F16) {
    for (int i = 0; i < 32; ++i) y[i] = h2f(reinterpret_cast<const uint16_t*>(r)[chunk * 32 + i]);
  } else if constexpr (W == GgmlType::BF16) {
    for (int i = 0; i < 32; ++i) y[i] = bf2f(reinterpret_cast<const uint16_t*>(r)[chunk * 32 + i]);
  } else if constexpr (W == GgmlType::Q4_K || W == GgmlType::Q5_K) {
    // 16-byte loads: the header (d, dmin, scales), the 32 quant bytes this sub-block shares with
    // its neighbour (low or high nibbles), and for Q5_K the 32 high-bit bytes.
    const int64_t b = chunk / 8;
    const int j = (int)(chunk % 8), c = j / 2;
    const uint8_t* blk = r + b * (W == GgmlType::Q4_K ? 144 : 176);
    const uint4 hdr = *reinterpret_cast<const uint4*>(blk);
    int sc, m;
    q4k_scale_min(hdr.y, hdr.z, hdr.w, j, sc, m);
    const float d = h2f((uint16_t)(hdr.x & 0xffff)), dmin = h2f((uint16_t)(hdr.x >> 16));
    const float d0 = __fmul_rn(d, (float)sc), m0 = __fmul_rn(dmin, (float)m);
    const uint4* qv = reinterpret_cast<const uint4*>(blk + (W == GgmlType::Q4_K ? 16 : 48) + 32 * c);
    uint32_t qw[8];
    *reinterpret_cast<uint4*>(qw) = qv[0];
    *reinterpret_cast<uint4*>(qw + 4) = qv[1];
    uint32_t hw[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if constexpr (W == GgmlType::Q5_K) {
      const uint4* hv = reinterpret_cast<const uint4*>(blk + 16);
      *reinterpret_cast<uint4*>(hw) = hv[0];
      *reinterpret_cast<uint4*>(hw + 4) = hv[1];
    }
    const int shift = (j & 1) ? 4 : 0;
#pragma unroll
    for (int wi = 0; wi < 8; ++wi)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int q = (qw[wi] >> (8 * e + shift)) & 0xF;
        if constexpr (W == GgmlType::Q5_K) q |= ((hw[wi] >> (8 * e + j)) & 1) << 4;
        y[4 * wi + e] = __fsub_rn(__fmul_rn(d0, (float)q), m0);
      }
  } else if constexpr (W == GgmlType::Q6_K) {
    const int64_t nb = w.cols / QK_K;
    const Q6Planes pl = q6_planes(w.data, w.rows * nb);
    const int64_t blk = row * nb + chunk / 8;
    const int e0 = (int)(chunk % 8) * 32;  // first element in the superblock
    const int h = e0 / 128, k = (e0 % 128) / 32;
    const float d = h2f(pl.d[blk]);
    const uint4* qlv = reinterpret_cast<const uint4*>(pl.ql + blk * kQ6Ql + 64 * h + 32 * (k & 1));
    const uint4* qhv = reinterpret_cast<const uint4*>(pl.qh + blk * kQ6Qh + 32 * h);
    uint32_t lw[8], hw[8];
    *reinterpret_cast<uint4*>(lw) = qlv[0];
    *reinterpret_cast<uint4*>(lw + 4) = qlv[1];
    *reinterpret_cast<uint4*>(hw) = qhv[0];
    *reinterpret_cast<uint4*>(hw + 4) = qhv[1];
    const float dg0 = __fmul_rn(d, (float)pl.sc[blk * kQ6Sc + e0 / 16]);
    const float dg1 = __fmul_rn(d, (float)pl.sc[blk * kQ6Sc + e0 / 16 + 1]);
    const int lshift = k < 2 ? 0 : 4;
#pragma unroll
    for (int wi = 0; wi < 8; ++wi)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = (((lw[wi] >> (8 * e + lshift)) & 0xF) | (((hw[wi] >> (8 * e + 2 * k)) & 3) << 4)) - 32;
        y[4 * wi + e] = __fmul_rn(wi < 4 ? dg0 : dg1, (float)q);
      }
  } else {
    constexpr int kBytes = W == GgmlType::Q4_0 ? 18 : W == GgmlType::Q4_1 ? 20 : W == GgmlType::Q5_0 ? 22
                         : W == GgmlType::Q5_1 ? 24 : 34;
    const uint8_t* blk = r + chunk * kBytes;
    const float d = h2f(ld_u16(blk));
    if constexpr (W == GgmlType::Q8_0) {
      for (int i = 0; i < 32; ++i) y[i] = __fmul_rn(d, (float)(int8_t)blk[2 + i]);
    } else {
      constexpr int qs_off = W == GgmlType::Q4_0 ? 2 : W == GgmlType::Q4_1 ? 4 : W == GgmlType::Q5_0 ? 6 : 8;
      uint32_t qh = 0;
      if constexpr (W == GgmlType::Q5_0 || W == GgmlType::Q5_1) qh = ld_u32_a2(blk + (W == GgmlType::Q5_0 ? 2 : 4));
      float m = 0.0f;
      if constexpr (W == GgmlType::Q4_1 || W == GgmlType::Q5_1) m = h2f(ld_u16(blk + 2));
      for (int i = 0; i < 32; ++i) {
        int q = i < 16 ? (blk[qs_off + i] & 0xF) : (blk[qs_off + i - 16] >> 4);
        if constexpr (W == GgmlType::Q5_0 || W == GgmlType::Q5_1) q |= ((qh >> i) & 1) << 4;
        if constexpr (W == GgmlType::Q4_0) y[i] = __fmul_rn(d, (float)(q - 8));
        else if constexpr (W == GgmlType::Q5_0) y[i] = __fmul_rn(d, (float)(q - 16));
        else y[i] = __fadd_rn(__fmul_rn(d, (float)q), m);
      }
    }
  }
}

template <GgmlType W>
__global__ void dequant_rows_f32_kernel(DeviceWeight w, const int32_t* rows, float* dst, int64_t ld) {
  pdl_trigger();
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int64_t n_chunks = w.cols / 32;
  const int64_t row = rows[blockIdx.y];
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < n_chunks; c += gridDim.x * blockDim.x) {
    float y[32];
    dequant_chunk<W>(w, row, c, y);
    float* o = dst + blockIdx.y * ld + c * 32;
    for (int i = 0; i < 32; ++i) o[i] = y[i];
  }
}

template <GgmlType W>
__global__ void dequant_rows_f16_kernel(DeviceWeight w, int64_t r0, int64_t n_rows, __half* dst) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int64_t n_chunks = w.cols / 32;
  const int64_t total = n_rows * n_chunks;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / n_chunks, c = i % n_chunks;
    float y[32];
    dequant_chunk<W>(w, r0 + row, c, y);
    uint4* o = reinterpret_cast<uint4*>(dst + row * w.cols + c * 32);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      __half2 h[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) h[e] = __floats2half2_rn(y[8 * k + 2 * e], y[8 * k + 2 * e + 1]);
      o[k] = *reinterpret_cast<uint4*>(h);
    }
  }
}

// ---- dequantize-and-multiply for a few tokens (rectification, short prompts) ------------------
// y[m][n] (+)= sum_k A[m][k] W[n][k] for M <= 64 tokens: each CTA dequantizes a 128-row x 256-deep
// slice of W into shared memory (F16) and multiplies it with the tokens' F16 activations on tensor
// cores, so the quantized weights are read once for all tokens. K is split over CTAs when the
// matrix has few rows: partial sums go to a workspace and are added in a fixed order (deterministic).

constexpr int DQ_BN = 128, DQ_BK = 256, DQ_LD = DQ_BK + 8, DQ_THREADS = 256;
constexpr size_t kDqSmem = (size_t)(64 + DQ_BN) * DQ_LD * sizeof(__half);

template <GgmlType W>
__global__ void __launch_bounds__(DQ_THREADS) dqmm_kernel(DeviceWeight w, const __half* A, int64_t lda, int M,
                                                         float* y, int64_t ldy, const float* bias, bool accumulate,
                                                         int k_chunks_per_split, float* partial) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* As = reinterpret_cast<__half*>(smem_raw);
  __half* Ws = As + 64 * DQ_LD;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n0 = (int64_t)blockIdx.x * DQ_BN;
  const int64_t K = w.cols;
  const int64_t kc0 = (int64_t)blockIdx.y * k_chunks_per_split;
  const int64_t kc_end = (K + DQ_BK - 1) / DQ_BK;
  const int64_t kc1 = kc0 + k_chunks_per_split < kc_end ? kc0 + k_chunks_per_split : kc_end;
  const int mt = (M + 15) / 16;
  float acc[4][2][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

  for (int64_t kc = kc0; kc < kc1; ++kc) {
    const int64_t k0 = kc * DQ_BK;
    __syncthreads();
    // activations: 64 x 256 halves, 16 B per thread-step
    for (int c = tid; c < 64 * (DQ_BK / 8); c += DQ_THREADS) {
      const int m = c / (DQ_BK / 8), kk = (c % (DQ_BK / 8)) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (m < M && k0 + kk < K) v = *reinterpret_cast<const uint4*>(A + m * lda + k0 + kk);
      *reinterpret_cast<uint4*>(As + m * DQ_LD + kk) = v;
    }
    // weights: 128 rows x 8 chunks of 32, dequantized as the CPU does, rounded to F16
    for (int c = tid; c < DQ_BN * (DQ_BK / 32); c += DQ_THREADS) {
      const int r = c / (DQ_BK / 32), ch = c % (DQ_BK / 32);
      const int64_t row = n0 + r, kk = k0 + ch * 32;
      __half2* dst = reinterpret_cast<__half2*>(Ws + r * DQ_LD + ch * 32);
      if (row < w.rows && kk < K) {
        float v[32];
        dequant_chunk<W>(w, row, kk / 32, v);
#pragma unroll
        for (int e = 0; e < 16; ++e) dst[e] = __floats2half2_rn(v[2 * e], v[2 * e + 1]);
      } else {
#pragma unroll
        for (int e = 0; e < 16; ++e) dst[e] = __floats2half2_rn(0.0f, 0.0f);
      }
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < DQ_BK; kk += 16) {
      uint32_t b0, b1, b2, b3;
      ldmatrix_x4(b0, b1, b2, b3, Ws + (16 * warp + (lane & 7) + (lane >> 4) * 8) * DQ_LD + kk + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        if (mi >= mt) break;
        uint32_t a[4];
        ldmatrix_x4(a[0], a[1], a[2], a[3], As + (16 * mi + (lane & 7) + ((lane >> 3) & 1) * 8) * DQ_LD + kk + (lane >> 4) * 8);
        mma_16816(acc[mi][0], a, b0, b1);
        mma_16816(acc[mi][1], a, b2, b3);
      }
    }
  }
  const int g4 = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 2; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 16 * mi + g4 + (e >> 1) * 8;
        const int64_t n = n0 + 16 * warp + 8 * ni + 2 * t4 + (e & 1);
        if (m >= M || n >= w.rows) continue;
        float v = acc[mi][ni][e];
        if (partial) {
          partial[((int64_t)blockIdx.y * M + m) * w.rows + n] = v;
          continue;
        }
        if (bias) v += bias[n];
        float* dst = y + m * ldy + n;
        *dst = accumulate ? *dst + v : v;
      }
}

__global__ void dqmm_reduce_kernel(const float* partial, int splits, int M, int64_t N, float* y, int64_t ldy,
                                   const float* bias, bool accumulate) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int64_t total = (int64_t)M * N;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / N, n = i % N;
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[(int64_t)s * total + i];
    if (bias) v += bias[n];
    float* dst = y + m * ldy + n;
    *dst = accumulate ? *dst + v : v;
  }
}

#include "backends/cuda/dqmm_pipe.cuh"

template <GgmlType W, int NT, int WARPS, int MINB>
bool dqmm_pipe_launch_nt(const DpArgs& a0, int n_sm, size_t ws_floats, cudaStream_t s) {
  static int optin[64] = {}, occ[64][5] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  dev &= 63;
  if (!optin[dev]) {
    PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&optin[dev], cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(dqmm_pipe_kernel<W, NT, WARPS, MINB>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, optin[dev]));
  }
  const size_t stage = dp_stage_bytes(dp_w_stage_bytes<W, WARPS>(), NT);
  // MINB CTAs per SM must fit (an SM has 1 KB more than a CTA may take, less 1 KB per CTA).
  const size_t per_cta = MINB == 1 ? (size_t)optin[dev] : ((size_t)optin[dev] + 1024) / MINB - 1024;
  int S = dqmm_stages() > 0 ? dqmm_stages() : 2;  // 2: fastest in run 10 (3 and 4 were no faster)
  S = std::min<int>(std::min(S, 4), (int)(per_cta / stage));
  if (S < 2) return false;
  if (!occ[dev][S]) {
    PYRESA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[dev][S], dqmm_pipe_kernel<W, NT, WARPS, MINB>,
                                                                    32 * WARPS, S * stage));
    occ[dev][S] = std::max(1, occ[dev][S]);
  }
  DpArgs a = a0;
  a.stages = S;
  a.bn = 16 * WARPS;
  a.units = ceil_div(a.w.rows, a.bn) * a.kc;
  const int grid = std::min(a.units, n_sm * occ[dev][S]);
  if ((size_t)2 * grid * a.M * a.bn > ws_floats) return false;
  launch(dqmm_pipe_kernel<W, NT, WARPS, MINB>, grid, 32 * WARPS, S * stage, s, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  bool shared_tile = false;  // does any CTA's range start inside a tile?
  for (int i = 1; i < grid && !shared_tile; ++i) shared_tile = stream_k_unit_begin(i, a.units, grid) % a.kc != 0;
  if (shared_tile) {
    const int64_t total = (int64_t)a.M * a.w.rows;
    launch(dqmm_pipe_reduce_kernel, (int)std::min<int64_t>((total + 255) / 256, 4 * n_sm), 256, 0, s, a, grid);
    PYRESA_CUDA_LAUNCH_CHECK();
  }
  return true;
}

template <GgmlType W, int WARPS, int MINB>
bool dqmm_pipe_launch_v(const DpArgs& a, int n_sm, size_t ws_floats, cudaStream_t s) {
  switch ((a.M + 7) / 8) {
    case 1: return dqmm_pipe_launch_nt<W, 1, WARPS, MINB>(a, n_sm, ws_floats, s);
    case 2: return dqmm_pipe_launch_nt<W, 2, WARPS, MINB>(a, n_sm, ws_floats, s);
    case 3: return dqmm_pipe_launch_nt<W, 3, WARPS, MINB>(a, n_sm, ws_floats, s);
    case 4: return dqmm_pipe_launch_nt<W, 4, WARPS, MINB>(a, n_sm, ws_floats, s);
    case 5: return dqmm_pipe_launch_nt<W, 5, WARPS, MINB>(a, n_sm, ws_floats, s);
    case 6: return dqmm_pipe_launch_nt<W, 6, WARPS, MINB>(a, n_sm, ws_floats, s);
    case 7: return dqmm_pipe_launch_nt<W, 7, WARPS, MINB>(a, n_sm, ws_floats, s);
    default: return dqmm_pipe_launch_nt<W, 8, WARPS, MINB>(a, n_sm, ws_floats, s);
  }
}

// The pipelined kernel where it applies (Q4_K, Q6_K; 16-byte aligned activation rows; a
// workspace): false to take dqmm_kernel. Variants (dqmm_variant()): 1 = 8 warps, one CTA per SM
// (deep ring); 2 = 8 warps, two CTAs per SM (at most 128 registers, shallower ring); 3 = 16 warps
// (256-row tiles, at most 128 registers). (A 4th, 1 with a rolled inner loop, measured no faster
// in run 10: removed.)
template <GgmlType W>
bool dqmm_pipe_launch(const DeviceWeight& w, const __half* A, int64_t lda, int M, float* y, int64_t ldy,
                      const float* bias, bool accumulate, int n_sm, float* ws, size_t ws_floats, cudaStream_t s) {
  if constexpr (W != GgmlType::Q4_K && W != GgmlType::Q6_K) {
    return false;
  } else {
    if (dqmm_variant() == 0 || !ws || w.cols % QK_K || lda % 8 || reinterpret_cast<uintptr_t>(A) % 16 ||
        reinterpret_cast<uintptr_t>(w.data) % 16)
      return false;
    DpArgs a;
    a.w = w;
    a.A = A;
    a.lda = lda;
    a.M = M;
    a.y = y;
    a.ldy = ldy;
    a.bias = bias;
    a.accumulate = accumulate;
    a.kc = (int)(w.cols / QK_K);
    a.units = 0;
    a.stages = 0;
    a.bn = 0;
    a.prefetch = dqmm_prefetch() % 100;
    a.trigger = dqmm_prefetch() >= 100;
    a.partial = ws;
    // (a variant whose two stages do not fit falls back to variant 1)
    if (dqmm_variant() == 2 && dqmm_pipe_launch_v<W, 8, 2>(a, n_sm, ws_floats, s)) return true;
    if (dqmm_variant() == 3 && dqmm_pipe_launch_v<W, 16, 1>(a, n_sm, ws_floats, s)) return true;
    return dqmm_pipe_launch_v<W, 8, 1>(a, n_sm, ws_floats, s);
  }
}

template <GgmlType W>
struct DqmmLaunch {
  static void run(const DeviceWeight& w, const __half* A, int64_t lda, int M, float* y, int64_t ldy, const float* bias,
                  bool accumulate, int n_sm, float* ws, size_t ws_floats, cudaStream_t s) {
    if (dqmm_pipe_launch<W>(w, A, lda, M, y, ldy, bias, accumulate, n_sm, ws, ws_floats, s)) return;
    static bool configured[64] = {};
    int dev = 0;
    cudaGetDevice(&dev);
    if (!configured[dev & 63]) {
      PYRESA_CUDA_CHECK(cudaFuncSetAttribute(dqmm_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kDqSmem));
      configured[dev & 63] = true;
    }
    const int n_blocks = ceil_div(w.rows, DQ_BN);
    const int k_chunks = ceil_div(w.cols, DQ_BK);
    // K splits: minimise (waves of CTAs) x (chunks per CTA) + half a chunk per wave (its ramp),
    // 2 CTAs per SM (shared memory). Why: filling the SMs once is not enough; a last wave that
    // is nearly empty costs as much as a full one (gate/up of a 7B model: 148 row blocks x 2
    // splits = 296 CTAs for 264 slots was two waves for 1.1 waves of work).
    const int slots = 2 * n_sm;
    const int max_splits = (int)std::max<int64_t>(
        1, std::min<int64_t>(k_chunks, ws ? (int64_t)(ws_floats / ((size_t)M * w.rows)) : 1));
    int splits = 1, per = k_chunks;
    double best = 1e30;
    for (int s_try = 1; s_try <= max_splits; ++s_try) {
      const int p_try = ceil_div(k_chunks, s_try), s_eff = ceil_div(k_chunks, p_try);
      if (s_eff != s_try) continue;  // same chunks per CTA as a smaller split count
      const int waves = ceil_div(n_blocks * s_eff, slots);
      const double cost = (double)waves * p_try + 0.5 * waves;
      if (cost < best) { best = cost; splits = s_eff; per = p_try; }
    }
    float* partial = splits > 1 ? ws : nullptr;
    launch(dqmm_kernel<W>, dim3(n_blocks, splits), DQ_THREADS, kDqSmem, s, w, A, lda, M, y, ldy, bias, accumulate, per,
                                                                         partial);
    PYRESA_CUDA_LAUNCH_CHECK();
    if (partial) {
      const int64_t total = (int64_t)M * w.rows;
      launch(dqmm_reduce_kernel, (int)std::min<int64_t>((total + 255) / 256, 4 * n_sm), 256, 0, s, 
          partial, splits, M, w.rows, y, ldy, bias, accumulate);
      PYRESA_CUDA_LAUNCH_CHECK();
    }
  }
};

template <template <GgmlType> class F, typename... Args>
void dispatch_type(GgmlType t, Args&&... args) {
  switch (t) {
    case GgmlType::F32: F<GgmlType::F32>::run(args...); break;
    case GgmlType::F16: F<GgmlType::F16>::run(args...); break;
    case GgmlType::BF16: F<GgmlType::BF16>::run(args...); break;
    case GgmlType::Q4_0: F<GgmlType::Q4_0>::run(args...); break;
    case GgmlType::Q4_1: F<GgmlType::Q4_1>::run(args...); break;
    case GgmlType::Q5_0: F<GgmlType::Q5_0>::run(args...); break;
    case GgmlType::Q5_1: F<GgmlType::Q5_1>::run(args...); break;
    case GgmlType::Q8_0: F<GgmlType::Q8_0>::run(args...); break;
    case GgmlType::Q4_K: F<GgmlType::Q4_K>::run(args...); break;
    case GgmlType::Q5_K: F<GgmlType::Q5_K>::run(args...); break;
    case GgmlType::Q6_K: F<GgmlType::Q6_K>::run(args...); break;
    default: throw UnsupportedError(std::string("CUDA backend: no kernels for weight type ") + type_traits(t).name);
  }
}

template <GgmlType W>
struct MatvecLaunch {
  static void run(const MatvecBatch& batch0, const uint8_t* act, size_t arb, int n, cudaStream_t s) {
    MatvecBatch b = batch0;
    b.prefetch = matvec_prefetch();
    int grid = 0;
    if constexpr (W == GgmlType::Q4_K || W == GgmlType::Q5_K || W == GgmlType::Q6_K) {
      const int R = matvec_rows_per_warp(), U = matvec_steps();
      // K split over the CTA's 4 warps for long rows (the 7B's down product: 74 superblocks, only
      // 448 CTAs of 2-row warps = 0.85 waves at 4 CTAs per SM, 20% of warps active).
      // matvec_ksplit(): 0 off, 1 with the rows/steps above, 10 * rows + steps: its own.
      const int ks = matvec_ksplit();
      const int kr = ks >= 10 ? ks / 10 : R, ku = ks >= 10 ? ks % 10 : U;
      if (n == 1 && ks > 0 && b.w[0].cols / QK_K >= 32 &&
          ((kr == 2 && (ku == 1 || ku == 2)) || (kr == 1 && ku == 2))) {
        for (int i = 0; i < b.n; ++i) {
          b.first[i] = grid;
          grid += ceil_div(b.w[i].rows, kr);
        }
        b.n_items = grid;
        if (matvec_grid_cap() > 0) grid = std::min(grid, matvec_grid_cap());
        if (kr == 1) launch(matvec_rows_kernel<W, 1, 2, kRowsPerCta>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else if (ku == 1) launch(matvec_rows_kernel<W, 2, 1, kRowsPerCta>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else launch(matvec_rows_kernel<W, 2, 2, kRowsPerCta>, grid, 32 * kRowsPerCta, 0, s, b, act);
        PYRESA_CUDA_LAUNCH_CHECK();
        return;
      }
      if (W == GgmlType::Q4_K && n == 1 && matvec_wide() && (R == 1 || R == 2) && (U == 1 || U == 2)) {
        const int wu = matvec_wide() == 2 ? 1 : U;  // 2: one step (8 superblocks) per load round
        for (int i = 0; i < b.n; ++i) {
          b.first[i] = grid;
          grid += ceil_div(b.w[i].rows, kRowsPerCta * R);
        }
        b.n_items = grid;
        if (matvec_grid_cap() > 0) grid = std::min(grid, matvec_grid_cap());
        if (R == 1) launch(matvec_q4k_wide_kernel<1, 2>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else if (wu == 1) launch(matvec_q4k_wide_kernel<2, 1>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else launch(matvec_q4k_wide_kernel<2, 2>, grid, 32 * kRowsPerCta, 0, s, b, act);
        PYRESA_CUDA_LAUNCH_CHECK();
        return;
      }
      if (n == 1 && R * U > 1 && R * U <= 4 && (R == 1 || R == 2 || R == 4) && (U == 1 || U == 2 || U == 4)) {
        for (int i = 0; i < b.n; ++i) {
          b.first[i] = grid;
          grid += ceil_div(b.w[i].rows, kRowsPerCta * R);
        }
        b.n_items = grid;
        if (matvec_grid_cap() > 0) grid = std::min(grid, matvec_grid_cap());
        if (R == 1 && U == 2) launch(matvec_rows_kernel<W, 1, 2>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else if (R == 1) launch(matvec_rows_kernel<W, 1, 4>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else if (R == 2 && U == 1) launch(matvec_rows_kernel<W, 2, 1>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else if (R == 2) launch(matvec_rows_kernel<W, 2, 2>, grid, 32 * kRowsPerCta, 0, s, b, act);
        else launch(matvec_rows_kernel<W, 4, 1>, grid, 32 * kRowsPerCta, 0, s, b, act);
        PYRESA_CUDA_LAUNCH_CHECK();
        return;
      }
    }
    for (int i = 0; i < b.n; ++i) {
      b.first[i] = grid;
      grid += ceil_div(b.w[i].rows, kRowsPerCta);
    }
    for (int t0 = 0; t0 < n; t0 += 8) {
      const int m = n - t0 < 8 ? n - t0 : 8;
      MatvecBatch bt = b;
      for (int i = 0; i < b.n; ++i) bt.out[i].y = b.out[i].y + t0 * b.out[i].ldy;
      const uint8_t* a = act + t0 * arb;
      if (m == 1) launch(matvec_kernel<W, 1>, grid, 32 * kRowsPerCta, 0, s, bt, a, arb, m);
      else if (m == 2) launch(matvec_kernel<W, 2>, grid, 32 * kRowsPerCta, 0, s, bt, a, arb, m);
      else if (m <= 4) launch(matvec_kernel<W, 4>, grid, 32 * kRowsPerCta, 0, s, bt, a, arb, m);
      else launch(matvec_kernel<W, 8>, grid, 32 * kRowsPerCta, 0, s, bt, a, arb, m);
      PYRESA_CUDA_LAUNCH_CHECK();
    }
  }
};

template <GgmlType W>
struct DequantF32Launch {
  static void run(const DeviceWeight& w, const int32_t* rows, int n, float* dst, int64_t ld, cudaStream_t s) {
    const int chunks = (int)(w.cols / 32);
    dim3 grid(ceil_div(chunks, 128), n);
    launch(dequant_rows_f32_kernel<W>, grid, 128, 0, s, w, rows, dst, ld);
    PYRESA_CUDA_LAUNCH_CHECK();
  }
};

template <GgmlType W>
struct DequantF16Launch {
  static void run(const DeviceWeight& w, int64_t r0, int64_t n_rows, __half* dst, cudaStream_t s) {
    const int64_t total = n_rows * (w.cols / 32);
    const int grid = (int)std::min<int64_t>((total + 255) / 256, 132 * 32);
    launch(dequant_rows_f16_kernel<W>, grid, 256, 0, s, w, r0, n_rows, dst);
    PYRESA_CUDA_LAUNCH_CHECK();
  }
};

// The folded-preparation / two-type one-token kernel (R = 2 rows per warp, U = 2 steps: the
// default matvec_rows_kernel's arithmetic) for the weight types W0, W1 and preparation F.
template <GgmlType W0, GgmlType W1>
void launch_rows_prep(const MatvecBatch& b, int grid, int F, const uint8_t* act, const ActPrep& p, uint8_t* dump,
                      size_t smem, cudaStream_t s) {
  constexpr int kT = 32 * kRowsPerCta;
  if constexpr (W0 != W1) {
    if (F == 0) {
      launch(matvec_rows_prep_kernel<W0, W1, 2, 2, 0>, grid, kT, 0, s, b, act, p, dump);
      return;
    }
  }
  if (F == 1) launch(matvec_rows_prep_kernel<W0, W1, 2, 2, 1>, grid, kT, smem, s, b, act, p, dump);
  else launch(matvec_rows_prep_kernel<W0, W1, 2, 2, 2>, grid, kT, smem, s, b, act, p, dump);
}

}  // namespace

int& matvec_rows_per_warp() {
  static int r = 2;
  return r;
}
int& matvec_steps() {
  static int u = 2;
  return u;
}
int& matvec_grid_cap() {
  static int c = 0;
  return c;
}
int& matvec_wide() {
  static int w = 0;
  return w;
}
int& matvec_ksplit() {
  static int k = 0;
  return k;
}
int& matvec_prefetch() {
  static int p = 2;
  return p;
}
int& dqmm_variant() {
  static int v = kDqmmDefaultVariant;
  return v;
}
int& dqmm_stages() {
  static int v = 0;
  return v;
}
int& dqmm_prefetch() {
  static int v = 0;
  return v;
}
int& matvec_prep_grid_cap() {
  static int c = 0;
  return c;
}
void set_pdl_early_quant(bool on) { set_pdl_early_this_unit(on); }

int64_t DeviceWeight::blocks_per_row() const { return cols / type_traits(type).block_size; }

size_t device_weight_bytes(GgmlType type, int64_t rows, int64_t cols) { return row_size(type, cols) * rows; }

DeviceWeight upload_weight(GgmlType type, int64_t rows, int64_t cols, const void* src, uint8_t* dst) {
  DeviceWeight w;
  w.type = type;
  w.rows = rows;
  w.cols = cols;
  w.data = dst;
  w.row_bytes = row_size(type, cols);
  const size_t bytes = w.row_bytes * rows;
  if (type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::BF16 && cols % 32 != 0)
    throw UnsupportedError("CUDA backend: rows must hold whole blocks");
  if (type == GgmlType::Q6_K) {
    const int64_t nblk = rows * (cols / QK_K);
    std::vector<uint8_t> planes(bytes);
    const auto* blocks = static_cast<const block_q6_K*>(src);
    uint8_t* ql = planes.data();
    uint8_t* qh = ql + nblk * kQ6Ql;
    uint8_t* sc = qh + nblk * kQ6Qh;
    uint8_t* d = sc + nblk * kQ6Sc;
    for (int64_t i = 0; i < nblk; ++i) {
      std::memcpy(ql + i * kQ6Ql, blocks[i].ql, kQ6Ql);
      std::memcpy(qh + i * kQ6Qh, blocks[i].qh, kQ6Qh);
      std::memcpy(sc + i * kQ6Sc, blocks[i].scales, kQ6Sc);
      std::memcpy(d + i * 2, &blocks[i].d, 2);
    }
    PYRESA_CUDA_CHECK(cudaMemcpy(dst, planes.data(), bytes, cudaMemcpyHostToDevice));
  } else {
    PYRESA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  }
  return w;
}

GgmlType act_type_for(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: return GgmlType::F32;
    case GgmlType::Q4_1: case GgmlType::Q5_1: return GgmlType::Q8_1;
    case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: return GgmlType::Q8_0;
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: return GgmlType::Q8_K;
    default: throw UnsupportedError(std::string("CUDA backend: no kernels for weight type ") + type_traits(t).name);
  }
}

size_t act_row_bytes(GgmlType a, int64_t cols) {
  switch (a) {
    case GgmlType::F32: return align16(4 * cols);
    case GgmlType::F16: return align16(2 * cols);
    case GgmlType::Q8_0: return align16(cols + 2 * (cols / 32));
    case GgmlType::Q8_1: return align16(cols + 4 * (cols / 32));
    case GgmlType::Q8_K: return align16(cols + 4 * (cols / QK_K) + 32 * (cols / QK_K));
    default: throw std::invalid_argument("act_row_bytes: not an activation format");
  }
}

void prepare_activations(const ActPrep& p, GgmlType a, int n_rows, int64_t cols, void* out, size_t rb,
                         cudaStream_t s) {
  if (n_rows <= 0) return;
  if ((a == GgmlType::Q8_0 || a == GgmlType::Q8_1) && cols % 32) throw std::invalid_argument("Q8 rows need cols % 32 == 0");
  if (a == GgmlType::Q8_K && cols % QK_K) throw std::invalid_argument("Q8_K rows need cols % 256 == 0");
  switch (p.transform) {
    case ActTransform::Plain: launch_prepare<ActTransform::Plain>(p, a, n_rows, cols, out, rb, s); break;
    case ActTransform::RmsNorm: launch_prepare<ActTransform::RmsNorm>(p, a, n_rows, cols, out, rb, s); break;
    case ActTransform::SwiGLU: launch_prepare<ActTransform::SwiGLU>(p, a, n_rows, cols, out, rb, s); break;
  }
}

void matvec(const DeviceWeight& w, const void* act, size_t arb, int n_tokens, const MatvecOut& out, cudaStream_t s) {
  matvec_multi(&w, &out, 1, act, arb, n_tokens, s);
}

void matvec_multi(const DeviceWeight* ws, const MatvecOut* outs, int n_w, const void* act, size_t arb, int n_tokens,
                  cudaStream_t s) {
  if (n_tokens <= 0 || n_w <= 0) return;
  if (n_w > 3) throw std::invalid_argument("matvec_multi: at most 3 weights");
  bool same = true;
  for (int i = 1; i < n_w; ++i) same = same && ws[i].type == ws[0].type;
  // One token of Q4_K / Q6_K weights: the bulk-copy kernel (matvec_bulk.cu) or the tensor-core
  // kernel (matvec_mma.cu) where one is on.
  if (n_tokens == 1 && same && (matvec_bulk(ws, outs, n_w, act, s) || matvec_mma(ws, outs, n_w, act, s))) return;
  MatvecBatch b;
  b.n = n_w;
  for (int i = 0; i < n_w; ++i) {
    if (ws[i].type != ws[0].type || ws[i].cols != ws[0].cols)
      throw std::invalid_argument("matvec_multi: the weights must share type and row length");
    b.w[i] = ws[i];
    b.out[i] = outs[i];
  }
  dispatch_type<MatvecLaunch>(ws[0].type, b, static_cast<const uint8_t*>(act), arb, n_tokens, s);
}

bool matvec_rows_prep(const DeviceWeight* ws, const MatvecOut* outs, int n_w, const ActPrep* prep, const void* act,
                      cudaStream_t s, bool dry_run, uint8_t* act_dump) {
  if (n_w < 1 || n_w > 3) return false;
  const GgmlType t0 = ws[0].type;
  GgmlType t1 = t0;
  int w1_from = n_w;
  for (int i = 0; i < n_w; ++i) {
    const GgmlType t = ws[i].type;
    if ((t != GgmlType::Q4_K && t != GgmlType::Q5_K && t != GgmlType::Q6_K) || ws[i].cols != ws[0].cols) return false;
    if (w1_from == n_w && t != t0) {
      w1_from = i;
      t1 = t;
    }
    if (i >= w1_from && t != t1) return false;  // W0 weights first, then W1 ones
  }
  // pairs: Q4_K or Q5_K with Q6_K, in either order
  if (t1 != t0 && t1 != GgmlType::Q6_K && t0 != GgmlType::Q6_K) return false;
  if (t1 != t0 && (t0 == GgmlType::Q6_K) == (t1 == GgmlType::Q6_K)) return false;
  const int64_t cols = ws[0].cols;
  if (cols % QK_K) return false;
  // Prepared input (no folded preparation): the bulk-copy and tensor-core kernels take mixed
  // Q4_K / Q6_K too.
  if (!prep && act && (matvec_bulk(ws, outs, n_w, act, s, dry_run) || matvec_mma(ws, outs, n_w, act, s, dry_run)))
    return true;
  // Only where the plain path would run matvec_rows_kernel<W, 2, 2> (whose arithmetic it shares).
  if (matvec_rows_per_warp() != 2 || matvec_steps() != 2) return false;
  if (matvec_wide() && (t0 == GgmlType::Q4_K || t1 == GgmlType::Q4_K)) return false;
  if (matvec_ksplit() && cols / QK_K >= 32) return false;
  const int F = !prep ? 0 : prep->transform == ActTransform::Plain ? 1 : prep->transform == ActTransform::RmsNorm ? 2 : -1;
  if (F < 0 || (F == 0 && (t0 == t1 || !act))) return false;
  const size_t smem = F ? act_row_bytes(GgmlType::Q8_K, cols) : 0;
  if (smem > 40 * 1024) return false;  // beyond the default 48 KB with room for the rest
  if (dry_run) return true;
  MatvecBatch b;
  b.n = n_w;
  b.w1_from = w1_from;
  b.prefetch = matvec_prefetch();
  int grid = 0;
  for (int i = 0; i < n_w; ++i) {
    b.w[i] = ws[i];
    b.out[i] = outs[i];
    b.first[i] = grid;
    grid += ceil_div(ws[i].rows, kRowsPerCta * 2);
  }
  b.n_items = grid;
  const int cap = matvec_prep_grid_cap() > 0 ? matvec_prep_grid_cap() : matvec_grid_cap();
  if (cap > 0) grid = std::min(grid, cap);
  const ActPrep p = prep ? *prep : ActPrep{};
  const auto* a = static_cast<const uint8_t*>(act);
  if (t0 == t1) {
    if (t0 == GgmlType::Q4_K) launch_rows_prep<GgmlType::Q4_K, GgmlType::Q4_K>(b, grid, F, a, p, act_dump, smem, s);
    else if (t0 == GgmlType::Q5_K) launch_rows_prep<GgmlType::Q5_K, GgmlType::Q5_K>(b, grid, F, a, p, act_dump, smem, s);
    else launch_rows_prep<GgmlType::Q6_K, GgmlType::Q6_K>(b, grid, F, a, p, act_dump, smem, s);
  } else if (t0 == GgmlType::Q4_K) {
    launch_rows_prep<GgmlType::Q4_K, GgmlType::Q6_K>(b, grid, F, a, p, act_dump, smem, s);
  } else if (t0 == GgmlType::Q5_K) {
    launch_rows_prep<GgmlType::Q5_K, GgmlType::Q6_K>(b, grid, F, a, p, act_dump, smem, s);
  } else if (t1 == GgmlType::Q4_K) {
    launch_rows_prep<GgmlType::Q6_K, GgmlType::Q4_K>(b, grid, F, a, p, act_dump, smem, s);
  } else {
    launch_rows_prep<GgmlType::Q6_K, GgmlType::Q5_K>(b, grid, F, a, p, act_dump, smem, s);
  }
  PYRESA_CUDA_LAUNCH_CHECK();
  return true;
}

bool matvec_gate_up_glu(const DeviceWeight& gate, const DeviceWeight& up, float* y_gate, float* y_up, const void* act,
                        int* counters, void* act_out, cudaStream_t s, bool dry_run) {
  const GgmlType t = gate.type;
  if (t != up.type || gate.rows != up.rows || gate.cols != up.cols || gate.rows % QK_K || gate.cols % QK_K) return false;
  if (t != GgmlType::Q4_K && t != GgmlType::Q5_K && t != GgmlType::Q6_K) return false;
  if (matvec_rows_per_warp() != 2 || matvec_steps() != 2) return false;  // the default kernel's arithmetic
  if (matvec_wide() && t == GgmlType::Q4_K) return false;
  if (matvec_ksplit() && gate.cols / QK_K >= 32) return false;
  if (dry_run) return true;
  MatvecBatch b;
  b.n = 2;
  b.w[0] = gate;
  b.w[1] = up;
  b.out[0].y = y_gate;
  b.out[1].y = y_up;
  b.out[0].ldy = b.out[1].ldy = gate.rows;
  b.prefetch = matvec_prefetch();
  const int per = ceil_div(gate.rows, kRowsPerCta * 2);
  b.first[0] = 0;
  b.first[1] = per;
  b.n_items = 2 * per;
  int grid = b.n_items;
  if (matvec_grid_cap() > 0) grid = std::min(grid, matvec_grid_cap());
  GluOut g{counters, static_cast<uint8_t*>(act_out), gate.rows};
  const auto* a = static_cast<const uint8_t*>(act);
  if (t == GgmlType::Q4_K) launch(matvec_rows_glu_kernel<GgmlType::Q4_K, 2, 2>, grid, 32 * kRowsPerCta, 0, s, b, a, g);
  else if (t == GgmlType::Q5_K) launch(matvec_rows_glu_kernel<GgmlType::Q5_K, 2, 2>, grid, 32 * kRowsPerCta, 0, s, b, a, g);
  else launch(matvec_rows_glu_kernel<GgmlType::Q6_K, 2, 2>, grid, 32 * kRowsPerCta, 0, s, b, a, g);
  PYRESA_CUDA_LAUNCH_CHECK();
  return true;
}

void dequant_matmul_small(const DeviceWeight& w, const __half* A, int64_t lda, int M, float* y, int64_t ldy,
                          const float* bias, bool accumulate, int n_sm, float* ws, size_t ws_floats, cudaStream_t s) {
  if (M <= 0) return;
  if (M > 64) throw std::invalid_argument("dequant_matmul_small: at most 64 tokens");
  if (w.cols % 32) throw UnsupportedError("CUDA backend: rows must be a multiple of 32 long");
  dispatch_type<DqmmLaunch>(w.type, w, A, lda, M, y, ldy, bias, accumulate, n_sm, ws, ws_floats, s);
}

void dequantize_rows_f32(const DeviceWeight& w, const int32_t* rows, int n, float* dst, int64_t ld, cudaStream_t s) {
  if (n <= 0) return;
  if (w.cols % 32) throw UnsupportedError("CUDA backend: embedding rows must be a multiple of 32 long");
  dispatch_type<DequantF32Launch>(w.type, w, rows, n, dst, ld, s);
}

void dequantize_rows_f16(const DeviceWeight& w, int64_t r0, int64_t n_rows, __half* dst, cudaStream_t s) {
  if (n_rows <= 0) return;
  if (w.cols % 32) throw UnsupportedError("CUDA backend: rows must be a multiple of 32 long for the GEMM path");
  dispatch_type<DequantF16Launch>(w.type, w, r0, n_rows, dst, s);
}

}  // namespace pyresa::cuda
