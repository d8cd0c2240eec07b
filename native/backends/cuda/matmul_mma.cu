// A few tokens' products on the int8 tensor cores (see matmul_mma.cuh for why).
//
// A CTA of 8 warps works on a tile of BN = 16 * MT * 8 weight rows; warp w owns rows
// [16 MT w, 16 MT (w + 1)), MT 16-row m-tiles. The (tile, superblock) units of a product are
// split evenly over one wave of CTAs (stream-K, as dqmm-pipe): each CTA streams its units through
// a ring of cp.async stages, one stage = one superblock of the tile's rows (the raw blocks) plus
// the tokens' Q8_K slice for it (quants, scale d, and for Q4_K the 16-sums), and keeps F32
// accumulators for its rows x all tokens.
//
// mma.sync operands: weights are A (16 rows), tokens are B (8 tokens per n-tile), both loaded
// with ldmatrix from shared memory (rows padded so that the 8 row addresses of an 8x16-byte
// matrix fall in 8 different bank groups):
// - Q4_K, m16n8k32 u8 x s8: one ldmatrix.x4 of 16 rows x 32 quant bytes gives the A fragments of
//   two scale groups (low nibbles: group 2c, high nibbles: group 2c + 1, one AND / one shift+AND
//   per register); one ldmatrix.x4 of 8 tokens x 64 bytes gives their B fragments. Each group's
//   s32 product is multiplied by the row's 6-bit scale and added to an s32 sum per (row, token,
//   superblock) = the CPU's sum_q. The mins' term sum_j m_j * (bsum_2j + bsum_2j+1) is one F16
//   mma per (m-tile, n-tile, superblock): A = the mins (each twice), B = the tokens' 16 int16
//   sums (|.| <= 2032, exact in F16), F32 accumulation of integers < 2^24: exact.
//   Then, as the CPU: acc += d_tok * (d * sum_q - dmin * sum_mins).
// - Q6_K, m16n8k16 s8 x s8: the weights as q - 32 (s8), so the group products already hold the
//   -32 offset and no block sums are needed; 16 groups of 16, one mma each;
//   acc += d_tok * d * sum_q.
#include <algorithm>
#include <stdexcept>

#include "backends/cuda/launch.cuh"
#include "backends/cuda/matmul_mma.cuh"
#include "backends/cuda/stream_k.cuh"

namespace pyresa::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kQ4Row = 144;  // Q4_K block as it is (d, dmin, 12 scale bytes, 128 quant bytes); 144 = 16 mod 128
constexpr int kQ6Ql = 144, kQ6Qh = 80, kQ6Sc = 16, kQ6D = 4;  // Q6_K planes per row in a stage (ql, qh padded)
constexpr int kQ6GlQl = 128, kQ6GlQh = 64, kQ6GlSc = 16;       // ... and as quant.cu uploads them
constexpr int kTokRow = 272;  // 256 quants + 16 (= 16 mod 128)
constexpr int kBsumRow = 32;  // 16 int16 sums

template <int MT>
__host__ __device__ constexpr int rows_per_cta() { return 16 * MT * kWarps; }
template <GgmlType W, int MT>
__host__ __device__ constexpr int w_stage_bytes() {
  return W == GgmlType::Q4_K ? rows_per_cta<MT>() * kQ4Row : rows_per_cta<MT>() * (kQ6Ql + kQ6Qh + kQ6Sc + kQ6D);
}
// Tokens of a stage: quants [NP][kTokRow], d [NP] floats, Q4_K: bsums [NP][kBsumRow].
template <GgmlType W, int NT>
__host__ __device__ constexpr int tok_stage_bytes() {
  return 8 * NT * (kTokRow + 4 + (W == GgmlType::Q4_K ? kBsumRow : 0));
}

struct MqArgs {
  DeviceWeight w;
  const uint8_t* act;
  int64_t arb;  // activation row bytes
  int M;
  float* y;
  int64_t ldy;
  const float* bias;
  int accumulate;
  int nb;       // superblocks per row
  int units;    // tiles * nb
  int stages;   // ring depth
  int bn;       // rows per tile
  float* partial;  // [2 * gridDim.x][M][bn]
};


__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
__device__ __forceinline__ void cp_async_wait_stages(int s) {  // at most s - 2 groups pending
  if (s <= 2) cp_async_wait<0>();
  else if (s == 3) cp_async_wait<1>();
  else cp_async_wait<2>();
}

// volatile: the compiler does not see that it reads shared memory, so it must not move it across
// the cp.async waits and barriers.
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
      : "r"(addr));
}
template <typename T>
__device__ __forceinline__ T lds(const void* p) { return *reinterpret_cast<const T*>(p); }

// c = A (16 x 32, u8) . B (32 x 8, s8)
__device__ __forceinline__ void imma_u8_k32(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                            uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}
// c = A (16 x 16, s8) . B (16 x 8, s8)
__device__ __forceinline__ void imma_s8_k16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};\n"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}
// c = A (16 x 16, f16) . B (16 x 8, f16), F32
__device__ __forceinline__ void hmma_k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}

// |v| < 2^22 to float exactly without I2F (a quarter-rate instruction): 1.5 * 2^23 + v.
__device__ __forceinline__ float small_int_float(int v) {
  return __int_as_float(v + 0x4B400000) - 12582912.0f;
}
// Two int16 (|.| <= 2048) as an F16 pair, exactly.
__device__ __forceinline__ uint32_t s16x2_to_h2(uint32_t x) {
  const int lo = (int)(int16_t)(x & 0xffffu), hi = (int)x >> 16;
  __half2 h = __floats2half2_rn(small_int_float(lo), small_int_float(hi));
  return *reinterpret_cast<uint32_t*>(&h);
}
// Byte j (0..63 here) of x duplicated as an F16 pair: (0x6400 | m) is 1024 + m.
__device__ __forceinline__ uint32_t byte_to_h2x2(uint32_t x, int j) {
  const uint32_t bits = __byte_perm(x, 0x64u, 0x4040u | (uint32_t)j | ((uint32_t)j << 8));
  __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&bits), __floats2half2_rn(1024.0f, 1024.0f));
  return *reinterpret_cast<uint32_t*>(&h);
}

// ---- loads of one unit (tile u / nb, superblock u % nb) into a stage ----------------------------

template <GgmlType W, int MT>
__device__ __forceinline__ void load_weights(const MqArgs& p, uint8_t* st, int u) {
  constexpr int BN = rows_per_cta<MT>();
  const int tile = u / p.nb, b = u - tile * p.nb;
  const int64_t n0 = (int64_t)tile * BN, last = p.w.rows - 1;
  const uint32_t s0 = smem_u32(st);
  if constexpr (W == GgmlType::Q4_K) {
    for (int i = threadIdx.x; i < BN * 9; i += kThreads) {
      const int r = i / 9, c = i - 9 * r;
      const int64_t row = n0 + r < last ? n0 + r : last;  // past the end: a real row, result discarded
      cp_async16(s0 + r * kQ4Row + 16 * c, p.w.data + row * p.w.row_bytes + (int64_t)b * kQ4Row + 16 * c);
    }
  } else {
    const int64_t nblk = p.w.rows * p.nb;
    const uint8_t* ql = p.w.data;
    const uint8_t* qh = ql + nblk * kQ6GlQl;
    const uint8_t* sc = qh + nblk * kQ6GlQh;
    const uint8_t* dd = sc + nblk * kQ6GlSc;
    const uint32_t sql = s0, sqh = s0 + BN * kQ6Ql, ssc = sqh + BN * kQ6Qh, sdd = ssc + BN * kQ6Sc;
    for (int i = threadIdx.x; i < BN * 14; i += kThreads) {
      const int r = i / 14, c = i - 14 * r;
      const int64_t row = n0 + r < last ? n0 + r : last;
      const int64_t blk = row * p.nb + b;
      if (c < 8) cp_async16(sql + r * kQ6Ql + 16 * c, ql + blk * kQ6GlQl + 16 * c);
      else if (c < 12) cp_async16(sqh + r * kQ6Qh + 16 * (c - 8), qh + blk * kQ6GlQh + 16 * (c - 8));
      else if (c == 12) cp_async16(ssc + r * kQ6Sc, sc + blk * kQ6GlSc);
      else  // the aligned word holding d (half of it when the plane ends after d)
        cp_async4(sdd + r * kQ6D, dd + 2 * (blk & ~int64_t(1)), (blk | 1) < nblk ? 4 : 2);
    }
  }
}

template <GgmlType W, int NT>
__device__ __forceinline__ void load_tokens(const MqArgs& p, uint8_t* tk, int u) {
  constexpr int NP = 8 * NT;
  const int b = u % p.nb;
  const int64_t cols = (int64_t)p.nb * QK_K;
  const uint32_t t0 = smem_u32(tk);
  for (int i = threadIdx.x; i < NP * 16; i += kThreads) {
    const int m = i >> 4, c = i & 15;
    const bool real = m < p.M;  // padding tokens: zeros
    cp_async16(t0 + m * kTokRow + 16 * c, p.act + (real ? m : 0) * p.arb + (int64_t)b * QK_K + 16 * c, real ? 16 : 0);
  }
  if (threadIdx.x < NP) {
    const int m = threadIdx.x;
    const bool real = m < p.M;
    cp_async4(t0 + NP * kTokRow + 4 * m, p.act + (real ? m : 0) * p.arb + cols + 4 * b, real ? 4 : 0);
  }
  if constexpr (W == GgmlType::Q4_K) {
    for (int i = threadIdx.x; i < NP * 8; i += kThreads) {
      const int m = i >> 3, wd = i & 7;
      const bool real = m < p.M;
      cp_async4(t0 + NP * (kTokRow + 4) + m * kBsumRow + 4 * wd,
                p.act + (real ? m : 0) * p.arb + cols + 4 * p.nb + (int64_t)b * kBsumRow + 4 * wd, real ? 4 : 0);
    }
  }
}

// ---- one superblock of the warp's rows x all tokens ------------------------------------------

template <int MT, int NT>
__device__ __forceinline__ void compute_q4k(const uint8_t* st, const uint8_t* tk, float (&acc)[MT][NT][4]) {
  constexpr int NP = 8 * NT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int r_base = 16 * MT * warp;
  const uint32_t w_s = smem_u32(st), tk_s = smem_u32(tk);
  // Headers of rows g, g + 8 of each m-tile: d, dmin, the 8 scales (two packed words), the mins'
  // F16 A fragment (k 2t, 2t + 1: m_t twice; k 2t + 8, 2t + 9: m_{t+4} twice).
  float d[MT][2], dm[MT][2];
  uint32_t sc[MT][2][2], amin[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4 h = lds<uint4>(st + (r_base + 16 * mt + g + 8 * i) * kQ4Row);
      d[mt][i] = h2f((uint16_t)(h.x & 0xffffu));
      dm[mt][i] = h2f((uint16_t)(h.x >> 16));
      sc[mt][i][0] = h.y & 0x3f3f3f3fu;
      sc[mt][i][1] = (h.w & 0x0f0f0f0fu) | ((h.y >> 2) & 0x30303030u);
      const uint32_t m_lo = h.z & 0x3f3f3f3fu;
      const uint32_t m_hi = ((h.w >> 4) & 0x0f0f0f0fu) | ((h.z >> 2) & 0x30303030u);
      amin[mt][i] = byte_to_h2x2(m_lo, t);
      amin[mt][2 + i] = byte_to_h2x2(m_hi, t);
    }
  int isum[MT][NT][4] = {};
  // ldmatrix row addresses: lane supplies row (lane & 7) of matrix lane >> 3
  const int lr = lane & 7, lm = lane >> 3;
#pragma unroll 1
  for (int c2 = 0; c2 < 2; ++c2)  // rolled: unrolled, the compiler hoists loads and spills
#pragma unroll
  for (int cc = 0; cc < 2; ++cc) {
    const int c = 2 * c2 + cc;
    uint32_t alo[MT][4], ahi[MT][4];
    int s0[MT][2], s1[MT][2];  // scales of groups 2c, 2c + 1 for rows g, g + 8
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t r[4];
      ldsm_x4(w_s + (r_base + 16 * mt + lr + 8 * (lm & 1)) * kQ4Row + 16 + 32 * c + 16 * (lm >> 1), r[0], r[1], r[2],
              r[3]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        alo[mt][j] = r[j] & 0x0f0f0f0fu;
        ahi[mt][j] = (r[j] >> 4) & 0x0f0f0f0fu;
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint32_t wsc = c2 ? sc[mt][i][1] : sc[mt][i][0];
        s0[mt][i] = (int)__byte_perm(wsc, 0, 0x4440u | (uint32_t)(2 * cc));
        s1[mt][i] = (int)__byte_perm(wsc, 0, 0x4440u | (uint32_t)(2 * cc + 1));
      }
    }
#pragma unroll
    for (int ni = 0; ni < NT; ++ni) {
      uint32_t b0, b1, b2, b3;  // group 2c: b0, b1; group 2c + 1: b2, b3
      ldsm_x4(tk_s + (8 * ni + lr) * kTokRow + 64 * c + 16 * lm, b0, b1, b2, b3);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        int c0[4], c1[4];
        imma_u8_k32(c0, alo[mt][0], alo[mt][1], alo[mt][2], alo[mt][3], b0, b1);
        imma_u8_k32(c1, ahi[mt][0], ahi[mt][1], ahi[mt][2], ahi[mt][3], b2, b3);
#pragma unroll
        for (int e = 0; e < 4; ++e) isum[mt][ni][e] += s0[mt][e >> 1] * c0[e] + s1[mt][e >> 1] * c1[e];
      }
    }
  }
  const uint8_t* tok_d = tk + NP * kTokRow;
  const uint8_t* tok_bs = tok_d + NP * 4;
#pragma unroll
  for (int ni = 0; ni < NT; ++ni) {
    const uint8_t* bs = tok_bs + (8 * ni + g) * kBsumRow;
    const uint32_t bm0 = s16x2_to_h2(lds<uint32_t>(bs + 4 * t)), bm1 = s16x2_to_h2(lds<uint32_t>(bs + 16 + 4 * t));
    const float2 ad = lds<float2>(tok_d + 4 * (8 * ni + 2 * t));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float cm[4];
      hmma_k16(cm, amin[mt], bm0, bm1);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e >> 1;
        const float v = fmaf(d[mt][i], (float)isum[mt][ni][e], -dm[mt][i] * cm[e]);
        acc[mt][ni][e] = fmaf((e & 1) ? ad.y : ad.x, v, acc[mt][ni][e]);
      }
    }
  }
}

template <int MT, int NT>
__device__ __forceinline__ void compute_q6k(const MqArgs& p, const uint8_t* st, const uint8_t* tk, int u,
                                            float (&acc)[MT][NT][4]) {
  constexpr int NP = 8 * NT, BN = rows_per_cta<MT>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int r_base = 16 * MT * warp;
  const uint32_t ql_s = smem_u32(st), qh_s = ql_s + BN * kQ6Ql, tk_s = smem_u32(tk);
  const uint8_t* scp = st + BN * (kQ6Ql + kQ6Qh);
  const uint8_t* ddp = scp + BN * kQ6Sc;
  const int tile = u / p.nb, b = u - tile * p.nb;
  float d[MT][2];
  uint4 scw[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = r_base + 16 * mt + g + 8 * i;
      scw[mt][i] = lds<uint4>(scp + r * kQ6Sc);
      const uint32_t dw = lds<uint32_t>(ddp + r * kQ6D);
      int64_t row = (int64_t)tile * BN + r;
      if (row > p.w.rows - 1) row = p.w.rows - 1;  // as loaded
      d[mt][i] = h2f((uint16_t)(((row * p.nb + b) & 1) ? dw >> 16 : dw & 0xffffu));
    }
  int isum[MT][NT][4] = {};
  const int lr = lane & 7, lm = lane >> 3;
#pragma unroll 1
  for (int h = 0; h < 2; ++h) {  // rolled (see compute_q4k)
    uint32_t qh[MT][4];  // [gpar 0: rows g, g + 8; gpar 1: rows g, g + 8]
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      ldsm_x4(qh_s + (r_base + 16 * mt + lr + 8 * (lm & 1)) * kQ6Qh + 32 * h + 16 * (lm >> 1), qh[mt][0], qh[mt][1],
              qh[mt][2], qh[mt][3]);
#pragma unroll
    for (int gp = 0; gp < 2; ++gp) {
      // groups 8h + 2k + gp (k = 0..3): elements 128h + 32k + 16gp + (0..15); thread t's 4 of
      // them (positions 4t..4t+3) from ql byte 64h + 32(k & 1) + 16gp + 4t (low nibble for k < 2)
      // and qh byte 32h + 16gp + 4t (bits 2k, 2k + 1).
      uint32_t a[MT][4][2];
      int s[MT][4][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t q[4];  // [k & 1 = 0: rows g, g + 8; k & 1 = 1: rows g, g + 8]
        ldsm_x4(ql_s + (r_base + 16 * mt + lr + 8 * (lm & 1)) * kQ6Ql + 64 * h + 32 * (lm >> 1) + 16 * gp, q[0], q[1],
                q[2], q[3]);
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const uint32_t src = q[2 * (k & 1) + i];
            const uint32_t lo = (k < 2 ? src : src >> 4) & 0x0f0f0f0fu;
            const uint32_t hq = qh[mt][2 * gp + i];
            const uint32_t x = (k == 0 ? hq << 4 : k == 1 ? hq << 2 : k == 2 ? hq : hq >> 2) & 0x30303030u;
            a[mt][k][i] = (lo + x + 0x60606060u) ^ 0x80808080u;  // q - 32 as int8 (q + 96 < 256: no carries)
            // group 8h + 2k + gp: scale word 2h + k / 2, byte 2 (k & 1) + gp
            const uint32_t sw = (k < 2) ? (h ? scw[mt][i].z : scw[mt][i].x) : (h ? scw[mt][i].w : scw[mt][i].y);
            s[mt][k][i] = (int)(int8_t)((sw >> (8 * (2 * (k & 1) + gp))) & 0xffu);
          }
      }
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
        uint32_t bk[4];  // groups 8h + 2k + gp of tokens 8ni .. 8ni + 7
        ldsm_x4(tk_s + (8 * ni + lr) * kTokRow + 16 * (8 * h + 2 * lm + gp), bk[0], bk[1], bk[2], bk[3]);
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            int c[4];
            imma_s8_k16(c, a[mt][k][0], a[mt][k][1], bk[k]);
#pragma unroll
            for (int e = 0; e < 4; ++e) isum[mt][ni][e] += s[mt][k][e >> 1] * c[e];
          }
      }
    }
  }
  const uint8_t* tok_d = tk + NP * kTokRow;
#pragma unroll
  for (int ni = 0; ni < NT; ++ni) {
    const float2 ad = lds<float2>(tok_d + 4 * (8 * ni + 2 * t));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        acc[mt][ni][e] = fmaf(((e & 1) ? ad.y : ad.x) * d[mt][e >> 1], (float)isum[mt][ni][e], acc[mt][ni][e]);
  }
}

// The accumulators of one tile's segment: to y (the whole tile in this CTA) or to a partial slot.
template <int MT, int NT>
__device__ __forceinline__ void store_tile(const MqArgs& p, int tile, float (&acc)[MT][NT][4], float* slot) {
  constexpr int BN = rows_per_cta<MT>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 8 * ni + 2 * t + (e & 1);
        const int nl = 16 * (MT * warp + mt) + g + 8 * (e >> 1);
        const int64_t n = (int64_t)tile * BN + nl;
        float v = acc[mt][ni][e];
        acc[mt][ni][e] = 0.0f;
        if (m >= p.M || n >= p.w.rows) continue;
        if (slot) {
          slot[m * BN + nl] = v;
          continue;
        }
        if (p.bias) v += p.bias[n];
        float* dst = p.y + m * p.ldy + n;
        *dst = p.accumulate ? *dst + v : v;
      }
}

template <GgmlType W, int MT, int NT, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) matmul_mma_kernel(MqArgs p) {
  extern __shared__ __align__(128) uint8_t mq_smem[];
  constexpr int BN = rows_per_cta<MT>();
  constexpr int WB = w_stage_bytes<W, MT>();
  constexpr int STAGE = WB + tok_stage_bytes<W, NT>();
  const int S = p.stages;
  const int u0 = stream_k_unit_begin(blockIdx.x, p.units, gridDim.x);
  const int u1 = stream_k_unit_begin(blockIdx.x + 1, p.units, gridDim.x);
  // Prologue: the first S - 1 units' weights before the PDL wait (they do not depend on the
  // previous kernel), then their tokens.
  for (int s = 0; s < S - 1; ++s)
    if (u0 + s < u1) load_weights<W, MT>(p, mq_smem + s * STAGE, u0 + s);
  pdl_wait();
  for (int s = 0; s < S - 1; ++s) {
    if (u0 + s < u1) load_tokens<W, NT>(p, mq_smem + s * STAGE + WB, u0 + s);
    cp_async_commit();
  }
  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni) acc[mt][ni][0] = acc[mt][ni][1] = acc[mt][ni][2] = acc[mt][ni][3] = 0.0f;
  int slot = 0, load_slot = S - 1;
  int seg_first = u0;
  for (int u = u0; u < u1; ++u) {
    cp_async_wait_stages(S);
    __syncthreads();  // unit u visible to all; everyone is done with the slot loaded next
    const int un = u + S - 1;
    if (un < u1) {
      uint8_t* st = mq_smem + load_slot * STAGE;
      load_weights<W, MT>(p, st, un);
      load_tokens<W, NT>(p, st + WB, un);
    }
    cp_async_commit();
    const uint8_t* st = mq_smem + slot * STAGE;
    if constexpr (W == GgmlType::Q4_K) compute_q4k<MT, NT>(st, st + WB, acc);
    else compute_q6k<MT, NT>(p, st, st + WB, u, acc);
    if (++slot == S) slot = 0;
    if (++load_slot == S) load_slot = 0;
    const int tile = u / p.nb;
    if (u % p.nb == p.nb - 1 || u == u1 - 1) {  // the end of this CTA's segment of the tile
      const bool whole = seg_first % p.nb == 0 && u % p.nb == p.nb - 1;
      float* part = whole ? nullptr : p.partial + ((size_t)(2 * blockIdx.x + (seg_first == u0 ? 0 : 1)) * p.M) * BN;
      store_tile<MT, NT>(p, tile, acc, part);
      seg_first = u + 1;
    }
  }
  cp_async_wait<0>();
}

// The tiles that CTAs share (stream_k.cuh).
__global__ void matmul_mma_reduce_kernel(MqArgs p, int grid) {
  pdl_wait();
  stream_k_reduce({p.y, p.ldy, p.bias, p.accumulate != 0, p.M, p.w.rows, p.bn, p.nb, p.units, p.partial}, grid);
}

// Rows per warp (m-tiles) for a type and token count: 2 where the registers allow it without
// spilling (the tokens' fragments then serve 32 rows; sm_90, CUDA 13.0: Q4_K up to 40 tokens,
// Q6_K up to 32), else 1. Two CTAs per SM (MINB 2, at most 128 registers): always 1.
template <GgmlType W, int NT, int MINB>
constexpr int mt_for() { return MINB == 1 && NT <= (W == GgmlType::Q4_K ? 5 : 4) ? 2 : 1; }

template <GgmlType W, int NT, int MINB>
bool launch_nt(const MqArgs& a0, int n_sm, size_t ws_floats, cudaStream_t s) {
  constexpr int MT = mt_for<W, NT, MINB>();
  constexpr int STAGE = w_stage_bytes<W, MT>() + tok_stage_bytes<W, NT>();
  static int optin[64] = {}, occ[64][5] = {};
  int dev = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  dev &= 63;
  if (!optin[dev]) {
    int v = 0;
    PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    PYRESA_CUDA_CHECK(
        cudaFuncSetAttribute(matmul_mma_kernel<W, MT, NT, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, v));
    optin[dev] = v;
  }
  // MINB CTAs per SM must fit (an SM has 1 KB more than a CTA may take, less 1 KB per CTA).
  const int per_cta = MINB == 1 ? optin[dev] : (optin[dev] + 1024) / MINB - 1024;
  int S = small_mmq_stages() > 0 ? std::min(small_mmq_stages(), 4) : 4;
  S = std::min(S, per_cta / STAGE);
  if (S < 2) return false;
  if (!occ[dev][S]) {
    PYRESA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[dev][S], matmul_mma_kernel<W, MT, NT, MINB>,
                                                                    kThreads, (size_t)S * STAGE));
    occ[dev][S] = std::max(1, occ[dev][S]);
  }
  MqArgs a = a0;
  a.stages = S;
  a.bn = rows_per_cta<MT>();
  a.units = ceil_div(a.w.rows, a.bn) * a.nb;
  // one wave: one CTA per SM (mode 1, as measured), or as many as fit (mode 2)
  const int cap = small_mmq_grid_cap() > 0 ? small_mmq_grid_cap() : n_sm * (MINB == 1 ? 1 : occ[dev][S]);
  const int grid = std::max(1, std::min(a.units, cap));
  if ((size_t)2 * grid * a.M * a.bn > ws_floats) return false;
  launch(matmul_mma_kernel<W, MT, NT, MINB>, grid, kThreads, (size_t)S * STAGE, s, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  bool shared_tile = false;  // does any CTA's range start inside a tile?
  for (int i = 1; i < grid && !shared_tile; ++i) shared_tile = stream_k_unit_begin(i, a.units, grid) % a.nb != 0;
  if (shared_tile) {
    const int64_t total = (int64_t)a.M * a.w.rows;
    launch(matmul_mma_reduce_kernel, (int)std::min<int64_t>((total + 255) / 256, 4 * n_sm), 256, 0, s, a, grid);
    PYRESA_CUDA_LAUNCH_CHECK();
  }
  return true;
}

template <GgmlType W, int MINB>
bool launch_type(const MqArgs& a, int n_sm, size_t ws_floats, cudaStream_t s) {
  switch ((a.M + 7) / 8) {
    case 1: return launch_nt<W, 1, MINB>(a, n_sm, ws_floats, s);
    case 2: return launch_nt<W, 2, MINB>(a, n_sm, ws_floats, s);
    case 3: return launch_nt<W, 3, MINB>(a, n_sm, ws_floats, s);
    case 4: return launch_nt<W, 4, MINB>(a, n_sm, ws_floats, s);
    case 5: return launch_nt<W, 5, MINB>(a, n_sm, ws_floats, s);
    case 6: return launch_nt<W, 6, MINB>(a, n_sm, ws_floats, s);
    case 7: return launch_nt<W, 7, MINB>(a, n_sm, ws_floats, s);
    default: return launch_nt<W, 8, MINB>(a, n_sm, ws_floats, s);
  }
}

}  // namespace

int& small_mmq_mode() {
  static int m = 0;
  return m;
}
int& small_mmq_stages() {
  static int s = 0;
  return s;
}
int& small_mmq_grid_cap() {
  static int c = 0;
  return c;
}

bool matmul_mma(const DeviceWeight& w, const void* act, size_t arb, int M, float* y, int64_t ldy, const float* bias,
                bool accumulate, int n_sm, float* ws, size_t ws_floats, cudaStream_t s, bool dry_run) {
  if (!small_mmq_mode() || M < 1 || M > 64) return false;
  if (w.type != GgmlType::Q4_K && w.type != GgmlType::Q6_K) return false;
  if (w.cols % QK_K || w.rows < 1 || reinterpret_cast<uintptr_t>(w.data) % 16) return false;
  if (dry_run) return true;
  if (!ws || arb % 16 || reinterpret_cast<uintptr_t>(act) % 16) return false;
  MqArgs a{};
  a.w = w;
  a.act = static_cast<const uint8_t*>(act);
  a.arb = (int64_t)arb;
  a.M = M;
  a.y = y;
  a.ldy = ldy;
  a.bias = bias;
  a.accumulate = accumulate ? 1 : 0;
  a.nb = (int)(w.cols / QK_K);
  a.partial = ws;
  // mode 2: two CTAs of 16-row warps per SM (twice the warps to hide latency; not yet measured)
  if (small_mmq_mode() == 2)
    return w.type == GgmlType::Q4_K ? launch_type<GgmlType::Q4_K, 2>(a, n_sm, ws_floats, s)
                                    : launch_type<GgmlType::Q6_K, 2>(a, n_sm, ws_floats, s);
  return w.type == GgmlType::Q4_K ? launch_type<GgmlType::Q4_K, 1>(a, n_sm, ws_floats, s)
                                  : launch_type<GgmlType::Q6_K, 1>(a, n_sm, ws_floats, s);
}

}  // namespace pyresa::cuda
