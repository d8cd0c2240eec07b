// One-token Q4_K / Q6_K products fed by bulk copies (TMA) into a shared-memory ring: a producer
// thread streams, G consumer warps compute (G = 16; 24 as a variant). See matvec_bulk.cuh for why.
//
// Work: the rows of all weights of a launch, in G-row groups (weight 0's groups, then weight
// 1's, ...). Of the n groups, CTA c takes the contiguous span [c * n / grid, (c + 1) * n / grid):
// one long stream of contiguous bytes per CTA. A group is copied in stage units of up to kChunk
// superblocks per row (one unit when a row has <= kChunk superblocks: then the G rows are one
// contiguous run, one copy per plane; else one copy per row and plane). Consumer warp w owns row
// w of each group and, per unit, does what matvec_rows_kernel's lanes do for that row: lane group
// lane / 8 takes the row's superblocks congruent to it mod 4, in increasing order (kChunk is a
// multiple of 4, so the order over units is the same), with the same integer sums and float
// operations, and the same warp reduction at the row's end: bit-identical outputs.
#include <algorithm>

#include "backends/cuda/launch.cuh"
#include "backends/cuda/matvec_bulk.cuh"

namespace pyresa::cuda {

namespace {

// G consumer warps per CTA, one row each: a group is G rows (16 by default; 24 with
// PYRESA_CUDA_MATVEC_BULK=21..24), plus one producer warp.
constexpr int kChunk = 16;  // superblocks per row per stage unit; a multiple of 4 (see above)
constexpr int kQ4Bytes = 144;
constexpr int kQ6Ql = 128, kQ6Qh = 64, kQ6Sc = 16;
// Q6_K stage: ql, qh and scale planes of G rows x kChunk superblocks, then the rows' fp16 d
// values, each copy rounded outward to 16-byte bounds (TMA sizes and addresses).
__host__ __device__ constexpr uint32_t q6_qh_off(int G) { return G * kChunk * kQ6Ql; }
__host__ __device__ constexpr uint32_t q6_sc_off(int G) { return q6_qh_off(G) + G * kChunk * kQ6Qh; }
__host__ __device__ constexpr uint32_t q6_d_off(int G) { return q6_sc_off(G) + G * kChunk * kQ6Sc; }
constexpr uint32_t kDSlot = 2 * kChunk + 32;  // per row, d bytes of a unit plus the rounding
// Stage bytes: Q4_K 36,864 (G = 16); Q6_K 54,272 (G = 16).
constexpr uint32_t stage_bytes_for(int G, bool q6) { return q6 ? q6_d_off(G) + G * kDSlot : G * kChunk * kQ4Bytes; }
constexpr int kMaxStages = 4;

constexpr uint32_t kBarBytes = 128;  // full[kMaxStages], empty[kMaxStages]
constexpr size_t kSmemLimit = 227 * 1024;

__host__ __device__ inline uint32_t round16(uint64_t n) { return (uint32_t)((n + 15) & ~uint64_t(15)); }
__host__ __device__ inline uint32_t round128(uint64_t n) { return (uint32_t)((n + 127) & ~uint64_t(127)); }

struct BulkArgs {
  DeviceWeight w[3];
  MatvecOut out[3];
  int first[4] = {0, 0, 0, 0};  // first group of each weight; first[n]: groups in all
  int n = 1;
  int64_t nb = 0;  // superblocks per row
  int chunks = 1;  // stage units per group
  uint32_t stage_bytes = 0;
  int stages = 3;
  uint32_t act_bytes = 0;  // Q8_K row planes (act_row_bytes(Q8_K, cols))
  const uint8_t* act = nullptr;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// A span [blk0, blk0 + n) of a Q6_K d plane (2 bytes per block, plane of nblk blocks at d) as one
// 16-byte-aligned copy: its source, size and the span's offset in it. False where the rounded
// copy would run past the plane's end (the last rows of a matrix): the d values are then read
// from global memory instead.
__device__ __forceinline__ bool q6_d_span(const uint8_t* d, int64_t nblk, int64_t blk0, int64_t n, const uint8_t*& src,
                                          uint32_t& bytes, uint32_t& lead) {
  const uint64_t a = reinterpret_cast<uint64_t>(d + 2 * blk0);
  const uint64_t a0 = a & ~uint64_t(15);
  const uint64_t a1 = (a + 2 * n + 15) & ~uint64_t(15);
  src = reinterpret_cast<const uint8_t*>(a0);
  bytes = (uint32_t)(a1 - a0);
  lead = (uint32_t)(a - a0);
  return a1 <= reinterpret_cast<uint64_t>(d + 2 * nblk);
}

__device__ __forceinline__ int group_weight(const BulkArgs& a, int g) {
  return (a.n > 2 && g >= a.first[2]) ? 2 : (a.n > 1 && g >= a.first[1]) ? 1 : 0;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// Global -> shared bulk copy (16-byte aligned, size a multiple of 16), counted on bar's tx bytes.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
template <int G>
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(32 * G) : "memory");
}

// Q4_K/Q5_K scales (quant.cu's q4k_scale_min).
__device__ __forceinline__ void q4k_scale_min(uint32_t w0, uint32_t w1, uint32_t w2, int j, int& sc, int& m) {
  const uint32_t sc_w = j < 4 ? (w0 & 0x3f3f3f3fu) : ((w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u));
  const uint32_t m_w = j < 4 ? (w1 & 0x3f3f3f3fu) : (((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u));
  sc = (sc_w >> (8 * (j & 3))) & 0xff;
  m = (m_w >> (8 * (j & 3))) & 0xff;
}

// The producer: one thread streams the CTA's units into the ring.
template <int G>
__device__ __forceinline__ void produce(const BulkArgs& a, int g0, int n_units, uint8_t* stages, uint32_t full,
                                        uint32_t empty) {
  const int64_t nb = a.nb;
  const int kcs = a.chunks == 1 ? (int)nb : kChunk;  // superblocks per row slot in a stage
  for (int u = 0; u < n_units; ++u) {
    const int s = u % a.stages, use = u / a.stages;
    if (use > 0) mbar_wait(empty + 8 * s, (use - 1) & 1);
    const int g = g0 + u / a.chunks, c = u % a.chunks;
    const int wi = group_weight(a, g);
    const DeviceWeight& w = a.w[wi];
    const int64_t row0 = (int64_t)(g - a.first[wi]) * G;
    const int nr = (int)min((int64_t)G, w.rows - row0);
    const int64_t c0 = (int64_t)c * kChunk;
    const int kc = (int)min((int64_t)kChunk, nb - c0);
    const uint32_t dst = smem_u32(stages + (size_t)s * a.stage_bytes);
    const uint32_t bar = full + 8 * s;
    if (w.type == GgmlType::Q4_K) {
      const uint32_t total = (uint32_t)nr * kc * kQ4Bytes;
      mbar_expect_tx(bar, total);
      if (a.chunks == 1) {
        bulk_copy(dst, w.data + row0 * w.row_bytes, total, bar);
      } else {
        for (int r = 0; r < nr; ++r)
          bulk_copy(dst + r * kcs * kQ4Bytes, w.data + (row0 + r) * w.row_bytes + c0 * kQ4Bytes, kc * kQ4Bytes, bar);
      }
    } else {  // Q6_K planes
      const int64_t nblk = w.rows * nb;
      const uint8_t* ql = w.data;
      const uint8_t* qh = ql + nblk * kQ6Ql;
      const uint8_t* sc = qh + nblk * kQ6Qh;
      const uint8_t* d = sc + nblk * kQ6Sc;
      const uint8_t* dsrc;
      uint32_t dbytes, lead;
      if (a.chunks == 1) {
        const int64_t blk0 = row0 * nb, n = (int64_t)nr * nb;
        const bool dcopy = q6_d_span(d, nblk, blk0, n, dsrc, dbytes, lead);
        mbar_expect_tx(bar, (uint32_t)n * (kQ6Ql + kQ6Qh + kQ6Sc) + (dcopy ? dbytes : 0));
        bulk_copy(dst, ql + blk0 * kQ6Ql, (uint32_t)n * kQ6Ql, bar);
        bulk_copy(dst + q6_qh_off(G), qh + blk0 * kQ6Qh, (uint32_t)n * kQ6Qh, bar);
        bulk_copy(dst + q6_sc_off(G), sc + blk0 * kQ6Sc, (uint32_t)n * kQ6Sc, bar);
        if (dcopy) bulk_copy(dst + q6_d_off(G), dsrc, dbytes, bar);
      } else {
        uint32_t total = (uint32_t)nr * kc * (kQ6Ql + kQ6Qh + kQ6Sc);
        for (int r = 0; r < nr; ++r)
          if (q6_d_span(d, nblk, (row0 + r) * nb + c0, kc, dsrc, dbytes, lead)) total += dbytes;
        mbar_expect_tx(bar, total);
        for (int r = 0; r < nr; ++r) {
          const int64_t blk0 = (row0 + r) * nb + c0;
          bulk_copy(dst + r * kcs * kQ6Ql, ql + blk0 * kQ6Ql, kc * kQ6Ql, bar);
          bulk_copy(dst + q6_qh_off(G) + r * kcs * kQ6Qh, qh + blk0 * kQ6Qh, kc * kQ6Qh, bar);
          bulk_copy(dst + q6_sc_off(G) + r * kcs * kQ6Sc, sc + blk0 * kQ6Sc, kc * kQ6Sc, bar);
          if (q6_d_span(d, nblk, blk0, kc, dsrc, dbytes, lead)) bulk_copy(dst + q6_d_off(G) + r * kDSlot, dsrc, dbytes, bar);
        }
      }
    }
  }
}

// One consumer warp's row over one unit's superblocks [c0, c0 + kc) (stage: the unit's stage,
// r: the row's slot in it), added to acc exactly as matvec_rows_kernel's lanes add them. Every
// shared-memory load of the unit's (up to 4) steps is issued before any arithmetic, so a warp has
// 16+ loads in flight and 4 independent dp4a chains (the first version, one step at a time, was
// 10 % slower than the dp4a kernel: 4 warps per scheduler could not hide the load latency).
// Lanes past the unit's last block load block 0 (in range) and discard it.
template <GgmlType W, int kU, int G>
__device__ __forceinline__ void consume_unit(const BulkArgs& a, const DeviceWeight& w, const uint8_t* stage, int r,
                                             int64_t row, int nr, int64_t c0, int kc, const uint8_t* act, float& acc) {
  constexpr int kSteps = kChunk / 4;
  const int lane = threadIdx.x & 31, j = lane & 7;
  const int64_t nb = a.nb;
  const int kcs = a.chunks == 1 ? (int)nb : kChunk;
  const int64_t cols = nb * QK_K;
  const int8_t* aq = reinterpret_cast<const int8_t*>(act);
  const float* ad_p = reinterpret_cast<const float*>(act + cols);
  const int16_t* bs_p = reinterpret_cast<const int16_t*>(act + cols + 4 * nb);
  // Q6_K: where this row's d values of the unit are (shared memory, or global past the end).
  const uint16_t* d6 = nullptr;
  if constexpr (W == GgmlType::Q6_K) {
    const int64_t nblk = w.rows * nb;
    const uint8_t* dg = w.data + nblk * (kQ6Ql + kQ6Qh + kQ6Sc);
    const uint8_t* dsrc;
    uint32_t dbytes, lead;
    const int64_t row0 = row - r;
    if (a.chunks == 1) {
      if (q6_d_span(dg, nblk, row0 * nb, (int64_t)nr * nb, dsrc, dbytes, lead))
        d6 = reinterpret_cast<const uint16_t*>(stage + q6_d_off(G) + lead) + (int64_t)r * nb;
      else
        d6 = reinterpret_cast<const uint16_t*>(dg) + row * nb;
    } else {
      if (q6_d_span(dg, nblk, row * nb + c0, kc, dsrc, dbytes, lead))
        d6 = reinterpret_cast<const uint16_t*>(stage + q6_d_off(G) + r * kDSlot + lead);
      else
        d6 = reinterpret_cast<const uint16_t*>(dg) + row * nb + c0;
    }
  }
  int qa_lo_off, qa_hi_off, g_lo, g_hi;
  if constexpr (W == GgmlType::Q6_K) {
    const int h = j >> 2, k2 = (j >> 1) & 1, lh = j & 1;
    g_lo = 8 * h + 2 * k2 + lh;
    qa_lo_off = 128 * h + 32 * k2 + 16 * lh;
    qa_hi_off = qa_lo_off + 64;
  } else {
    const int c = j >> 1, hh = j & 1;
    g_lo = 4 * c + hh;
    qa_lo_off = 64 * c + 16 * hh;
    qa_hi_off = qa_lo_off + 32;
  }
  g_hi = W == GgmlType::Q6_K ? g_lo + 4 : g_lo + 2;
  const int n_steps = (kc + 3) >> 2;  // warp-uniform
#pragma unroll
  for (int s0 = 0; s0 < kSteps; s0 += kU) {
  if (s0 >= n_steps) break;
  // 1. every load of kU steps.
  uint4 va[kU], vb[kU], alo[kU], ahi[kU];
  int s6lo[kU], s6hi[kU], bs_lo[kU], bs_hi[kU];
  uint16_t d6v[kU];
  float ad[kU];
  bool valid[kU];
#pragma unroll
  for (int st = 0; st < kU; ++st) {
    if (s0 + st < n_steps) {
      const int bl0 = 4 * (s0 + st) + (lane >> 3);
      valid[st] = bl0 < kc;
      const int bl = valid[st] ? bl0 : 0;
      const int64_t b = c0 + bl;
      if constexpr (W == GgmlType::Q6_K) {
        const int h = j >> 2, k2 = (j >> 1) & 1, lh = j & 1;
        const int slot = r * kcs + bl;
        va[st] = *reinterpret_cast<const uint4*>(stage + slot * kQ6Ql + 64 * h + 32 * k2 + 16 * lh);
        vb[st] = *reinterpret_cast<const uint4*>(stage + q6_qh_off(G) + slot * kQ6Qh + 32 * h + 16 * lh);
        const int8_t* scp = reinterpret_cast<const int8_t*>(stage + q6_sc_off(G) + slot * kQ6Sc);
        s6lo[st] = scp[g_lo];
        s6hi[st] = scp[g_hi];
        d6v[st] = d6[bl];
      } else {
        const int c = j >> 1, hh = j & 1;
        const uint8_t* blk = stage + (r * kcs + bl) * kQ4Bytes;
        va[st] = *reinterpret_cast<const uint4*>(blk);
        vb[st] = *reinterpret_cast<const uint4*>(blk + 16 + 32 * c + 16 * hh);
      }
      alo[st] = *reinterpret_cast<const uint4*>(aq + b * QK_K + qa_lo_off);
      ahi[st] = *reinterpret_cast<const uint4*>(aq + b * QK_K + qa_hi_off);
      bs_lo[st] = bs_p[b * 16 + g_lo];
      bs_hi[st] = bs_p[b * 16 + g_hi];
      ad[st] = ad_p[b];
    }
  }
  // 2. the arithmetic, step by step, as matvec_rows_kernel does it.
#pragma unroll
  for (int st = 0; st < kU; ++st) {
    if (s0 + st < n_steps) {
      int wlo[4], whi[4];
      int sc_lo, sc_hi, m_lo = 0, m_hi = 0;
      float d, dmin = 0.0f;
      if constexpr (W == GgmlType::Q6_K) {
        const int k2 = (j >> 1) & 1;
        const uint32_t ql[4] = {va[st].x, va[st].y, va[st].z, va[st].w};
        const uint32_t qh[4] = {vb[st].x, vb[st].y, vb[st].z, vb[st].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          wlo[i] = (int)((ql[i] & 0x0f0f0f0fu) | (((qh[i] >> (2 * k2)) & 0x03030303u) << 4));
          whi[i] = (int)(((ql[i] >> 4) & 0x0f0f0f0fu) | (((qh[i] >> (2 * k2 + 4)) & 0x03030303u) << 4));
        }
        sc_lo = s6lo[st];
        sc_hi = s6hi[st];
        d = h2f(d6v[st]);
      } else {
        const int c = j >> 1;
        const uint4 hdr = va[st];
        const uint32_t qs[4] = {vb[st].x, vb[st].y, vb[st].z, vb[st].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          wlo[i] = (int)(qs[i] & 0x0f0f0f0fu);
          whi[i] = (int)((qs[i] >> 4) & 0x0f0f0f0fu);
        }
        q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * c, sc_lo, m_lo);
        q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * c + 1, sc_hi, m_hi);
        d = h2f((uint16_t)(hdr.x & 0xffff));
        dmin = h2f((uint16_t)(hdr.x >> 16));
      }
      int dlo = 0, dhi = 0;
      dlo = __dp4a(wlo[0], (int)alo[st].x, dlo);
      dlo = __dp4a(wlo[1], (int)alo[st].y, dlo);
      dlo = __dp4a(wlo[2], (int)alo[st].z, dlo);
      dlo = __dp4a(wlo[3], (int)alo[st].w, dlo);
      dhi = __dp4a(whi[0], (int)ahi[st].x, dhi);
      dhi = __dp4a(whi[1], (int)ahi[st].y, dhi);
      dhi = __dp4a(whi[2], (int)ahi[st].z, dhi);
      dhi = __dp4a(whi[3], (int)ahi[st].w, dhi);
      if constexpr (W == GgmlType::Q6_K) {
        const int sq = sc_lo * (dlo - 32 * bs_lo[st]) + sc_hi * (dhi - 32 * bs_hi[st]);
        if (valid[st]) acc += __fmul_rn(__fmul_rn(ad[st], d), (float)sq);
      } else {
        const int sq = sc_lo * dlo + sc_hi * dhi;
        const int sm = m_lo * bs_lo[st] + m_hi * bs_hi[st];
        if (valid[st]) acc += __fmul_rn(ad[st], __fsub_rn(__fmul_rn(d, (float)sq), __fmul_rn(dmin, (float)sm)));
      }
    }
  }
  }
}
#endif

// U: steps (of 4 superblocks) whose loads a consumer warp issues together (1 or 2).
template <int U, int G>
__global__ void __launch_bounds__(32 * (G + 1), 1) matvec_bulk_kernel(BulkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t full = smem_u32(smem), empty = full + 8 * kMaxStages;
  uint8_t* act_s = smem + kBarBytes;
  uint8_t* stages = act_s + round128(a.act_bytes);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_groups = a.first[a.n];
  const int g0 = (int)((int64_t)blockIdx.x * n_groups / gridDim.x);
  const int g1 = (int)((int64_t)(blockIdx.x + 1) * n_groups / gridDim.x);
  const int n_units = (g1 - g0) * a.chunks;
  if (threadIdx.x == 0) {
    for (int s = 0; s < a.stages; ++s) {
      mbar_init(full + 8 * s, 1);                        // the producer's expect_tx arrival
      mbar_init(empty + 8 * s, 32 * G);    // every consumer thread
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (warp == G) {
    // The weights do not depend on the previous kernel (PDL): stream them at once.
    if (lane == 0) produce<G>(a, g0, n_units, stages, full, empty);
    return;
  }
  // Consumers: the activations once the previous kernel is done, then the units in order.
  pdl_wait();
  for (uint32_t i = threadIdx.x; i < a.act_bytes / 16; i += 32 * G)
    reinterpret_cast<uint4*>(act_s)[i] = reinterpret_cast<const uint4*>(a.act)[i];
  consumers_sync<G>();
  float acc = 0.0f;
  for (int u = 0; u < n_units; ++u) {
    if (u == n_units - 1) pdl_trigger();  // this CTA's last unit: let the next kernel be scheduled
    const int s = u % a.stages, use = u / a.stages;
    const int g = g0 + u / a.chunks, c = u % a.chunks;
    const int wi = group_weight(a, g);
    const DeviceWeight& w = a.w[wi];
    const int64_t row0 = (int64_t)(g - a.first[wi]) * G;
    const int nr = (int)min((int64_t)G, w.rows - row0);
    const int64_t c0 = (int64_t)c * kChunk;
    const int kc = (int)min((int64_t)kChunk, a.nb - c0);
    const uint8_t* stage = stages + (size_t)s * a.stage_bytes;
    mbar_wait(full + 8 * s, use & 1);
    if (warp < nr) {
      if (w.type == GgmlType::Q6_K) consume_unit<GgmlType::Q6_K, U, G>(a, w, stage, warp, row0 + warp, nr, c0, kc, act_s, acc);
      else consume_unit<GgmlType::Q4_K, U, G>(a, w, stage, warp, row0 + warp, nr, c0, kc, act_s, acc);
    }
    mbar_arrive(empty + 8 * s);  // this thread is done reading the stage
    if (c == a.chunks - 1) {
      if (warp < nr) {
        const float v = warp_sum(acc) + 0.0f;  // as matvec_rows_kernel
        if (lane == 0) {
          const MatvecOut& out = a.out[wi];
          const int64_t row = row0 + warp;
          float* y = out.y + row;
          const float rr = out.bias ? v + out.bias[row] : v;
          *y = out.accumulate ? *y + rr : rr;
        }
      }
      acc = 0.0f;
    }
  }
#endif
}

struct DeviceInfo {
  int major = -1, n_sm = 0;
  bool smem_set = false;
};
DeviceInfo& device_info() {
  static DeviceInfo info[64];
  int dev = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  DeviceInfo& d = info[dev & 63];
  if (d.major < 0) {
    PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev));
    PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&d.n_sm, cudaDevAttrMultiProcessorCount, dev));
  }
  return d;
}

}  // namespace

int& matvec_bulk_mode() {
  static int v = 0;
  return v;
}
int& matvec_bulk_grid_cap() {
  static int v = 0;
  return v;
}
int& matvec_bulk_min_groups() {
  static int v = 0;
  return v;
}

bool matvec_bulk(const DeviceWeight* ws, const MatvecOut* outs, int n_w, const void* act, cudaStream_t s,
                 bool dry_run) {
  const int mode = matvec_bulk_mode();
  if (mode <= 0 || n_w < 1 || n_w > 3 || !act) return false;
  const int64_t cols = ws[0].cols;
  if (cols <= 0 || cols % QK_K) return false;
  bool any6 = false;
  for (int i = 0; i < n_w; ++i) {
    if ((ws[i].type != GgmlType::Q4_K && ws[i].type != GgmlType::Q6_K) || ws[i].cols != cols || ws[i].rows <= 0)
      return false;
    any6 = any6 || ws[i].type == GgmlType::Q6_K;
  }
  DeviceInfo& dev = device_info();
  if (dev.major < 9) return false;  // bulk copies and mbarrier transaction counts: sm_90
  BulkArgs a;
  a.n = n_w;
  a.nb = cols / QK_K;
  a.chunks = (int)((a.nb + kChunk - 1) / kChunk);
  const int u = mode / 10 == 1 ? 1 : 2;  // 11-14: one step's loads at a time (the first version)
  const int G = mode / 10 == 2 ? 24 : 16;  // 21-24: 24 consumer warps
  a.stage_bytes = stage_bytes_for(G, any6);
  a.act_bytes = round16(cols + 36 * a.nb);
  a.act = static_cast<const uint8_t*>(act);
  int stages = mode % 10 <= 1 ? 3 : std::min(mode % 10, kMaxStages);
  auto smem_for = [&](int st) { return (size_t)kBarBytes + round128(a.act_bytes) + (size_t)st * a.stage_bytes; };
  while (stages > 2 && smem_for(stages) > kSmemLimit) --stages;
  if (smem_for(stages) > kSmemLimit) return false;
  a.stages = stages;
  int groups = 0;
  for (int i = 0; i < n_w; ++i) {
    a.w[i] = ws[i];
    a.out[i] = outs[i];
    a.first[i] = groups;
    groups += ceil_div(ws[i].rows, G);
  }
  a.first[n_w] = groups;
  const int cap = matvec_bulk_grid_cap() > 0 ? matvec_bulk_grid_cap() : dev.n_sm;
  // Only products long enough per CTA (run 13-mmvbulk: the bulk kernel won on gate+up, ~18 groups
  // per CTA, and the lm head, ~72, and lost on down / q/k/v / o, ~2 per CTA: ring fill latency
  // and 1-vs-2-group imbalance).
  if (matvec_bulk_min_groups() > 0 && groups < (int64_t)matvec_bulk_min_groups() * cap) return false;
  if (dry_run) return true;
  if (!dev.smem_set) {
    for (auto k : {matvec_bulk_kernel<1, 16>, matvec_bulk_kernel<2, 16>, matvec_bulk_kernel<2, 24>})
      PYRESA_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemLimit));
    dev.smem_set = true;
  }
  const int grid = std::max(1, std::min(groups, cap));
  const size_t smem = smem_for(stages);
  if (G == 24) launch(matvec_bulk_kernel<2, 24>, grid, 32 * 25, smem, s, a);
  else if (u == 1) launch(matvec_bulk_kernel<1, 16>, grid, 32 * 17, smem, s, a);
  else launch(matvec_bulk_kernel<2, 16>, grid, 32 * 17, smem, s, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  return true;
}

}  // namespace pyresa::cuda
