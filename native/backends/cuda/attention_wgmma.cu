// Dense causal attention for many query rows (rectification, prefill chunks) on Hopper's
// warpgroup tensor-core instructions (wgmma, sm_90a): attention_batched() variant 4.
//
// Why: the mma.sync variants (attention_batched.cu) run the precise mode's 7.7 TFLOP per
// rectification at ~410 TFLOP/s, held back by the non-tensor part of each tile (softmax, the
// two-term packing of P, the rescale) running while the tensor pipe idles: mma.sync is issued and
// waited by the same warp. wgmma is asynchronous, reads its B operand (and here the query) from
// shared memory, and runs at ~1.5x mma.sync's rate, so a warpgroup can issue the products of
// tile t+1 and do the softmax of tile t while they run (FlashAttention-3's intra-warpgroup
// pipelining); two consumer warpgroups per CTA fill each other's gaps.
//
// Layout of a CTA (384 threads, one per SM): warpgroups 0 and 1 own 64 query rows each (128
// rows: a 231-row GQA group of a rectification takes two CTAs, whose K/V reads of the same split
// meet in L2); warpgroup 2 is the producer (setmaxnreg gives its registers to the consumers: 232
// each, no spills): it streams K/V tiles of 64 keys with cp.async into a
// 4-stage ring, written in the 128-byte swizzled layout wgmma reads, and signals each tile on an
// mbarrier ("full"); consumers give a stage back on another ("empty") once both products that
// read it are done. The query (hi and, QSPLIT, lo term) stays in shared memory for the whole run.
// Per tile and warpgroup: S = Q K^T (m64n64k16, D/16 k-steps, doubled for QSPLIT), the online
// softmax in registers, O += P V with P from registers (m64nDk16, 4 k-steps, doubled for PSPLIT).
// Schedule: issue S(t+1) and O += P(t) V(t); wait for S(t+1); softmax(t+1) while P(t) V(t) runs;
// wait; rescale O. Splits over the sequence and the log-sum-exp combine as the other variants.
// Precision as the other variants: QSPLIT two-term F16 query, PSPLIT two-term probabilities.
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "backends/cuda/attention.cuh"
#include "backends/cuda/attention_epilogue.cuh"
#include "backends/cuda/attention_split.cuh"
#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"

// wgmma and its descriptors exist only in the sm_90a pass; elsewhere the kernel is an empty stub
// and attention_wgmma_available() says false (the engine then keeps the mma.sync variant).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PYRESA_WGMMA 1
#else
#define PYRESA_WGMMA 0
#endif

namespace pyresa::cuda {

namespace {

constexpr int kBN = 64;      // keys per tile
constexpr int kWG = 2;       // consumer warpgroups, 64 rows each
constexpr int kStages = 4;   // K/V ring depth
constexpr int kThreads = 128 * kWG + 128;  // + the producer warpgroup
constexpr int kRows = 64 * kWG;

template <int D>
struct WgCfg {
  static constexpr int Q_BYTES = 64 * D * 2;     // one warpgroup's query, one term
  static constexpr int TILE_BYTES = kBN * D * 2;  // K or V of one tile
  static constexpr int K_OFF = kWG * 2 * Q_BYTES;
  static constexpr int V_OFF = K_OFF + kStages * TILE_BYTES;
  static constexpr int BAR_OFF = V_OFF + kStages * TILE_BYTES;
  static constexpr size_t SMEM = BAR_OFF + 2 * kStages * 8 + 1024;  // + slack to align the base to 1 KB
};

#if PYRESA_WGMMA
constexpr int kLag = 2;  // producer: tiles in flight before it signals the oldest

// Byte offset of element (row, d) in an operand stored as [D/64][n_rows][64] F16 with the
// 128-byte swizzle (16-byte chunk c of a 128-byte row r lands at chunk c ^ (r & 7)): the layout
// wgmma's SWIZZLE_128B descriptors read, K-major (Q, K: row = query row / key) and N-major (V:
// row = key, N = D). Every block starts on a 1 KB boundary.
__device__ __forceinline__ uint32_t sw128(int row, int d, int n_rows) {
  return (uint32_t)((d >> 6) * n_rows * 128 + row * 128 + ((((d >> 3) & 7) ^ (row & 7)) << 4) + (d & 7) * 2);
}

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets (K-major: SBO = 8 rows x 128 B between 8-row groups, LBO unused; N-major: LBO between
// 64-wide N blocks, SBO between 8-key groups), layout type 1 (SWIZZLE_128B) in bits 62-63.
__device__ __forceinline__ uint64_t gmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins registers that an asynchronous wgmma reads or writes at this point of the program, so
// the compiler neither reads them before the wait nor reuses them before it.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(r[i][e])::"memory");
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
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
// Ordinary and cp.async writes to shared memory, made visible to the tensor cores' (async proxy) reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// d[32] (+)= A(64x16, shared, K-major) * B(16x64, shared, K-major); scale_d 0: d = A*B.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d)
      : "memory");
}

// d[32] += A(64x16, registers) * B(16x64, shared, N-major: imm-trans-b 1).
__device__ __forceinline__ void wgmma_m64n64k16_rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1)
      : "memory");
}

// d[64] += A(64x16, registers) * B(16x128, shared, N-major: imm-trans-b 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1)
      : "memory");
}


template <int D>
__device__ __forceinline__ void wgmma_pv(float (&o)[D / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (D == 128) wgmma_m64n128k16_rs_tb(o, a, desc_b);
  else wgmma_m64n64k16_rs_tb(o, a, desc_b);
}
#endif  // PYRESA_WGMMA

template <int D, bool QSPLIT, bool PSPLIT>
__global__ void __launch_bounds__(kThreads, 1) attention_wgmma_kernel(AttentionArgs a) {
#if PYRESA_WGMMA
  pdl_wait();  // the query and the new K/V come from the kernels just before (PDL)
  using C = WgCfg<D>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // the swizzle pattern follows address bits 7-9
  unsigned char* const sbase = smem_raw + (base - raw);
  const uint32_t bar_full = base + C::BAR_OFF, bar_empty = bar_full + 8 * kStages;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.z, split = blockIdx.y, n_splits = gridDim.y;
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  const int row0 = blockIdx.x * kRows;
  const int pos0 = *a.pos_dev + a.pos_offset;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar_full + 8 * s, 128);        // the producer warpgroup's threads
      mbar_init(bar_empty + 8 * s, 4 * kWG);   // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // Query rows -> F16 hi (and lo) terms, swizzled; rows past R are zero (computed, never written).
  for (int idx = tid; idx < kRows * (D / 8); idx += kThreads) {
    const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
    const int gr = row0 + r;
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (gr < R) {
      const float* src = a.q + (gr / G) * a.q_stride + (int64_t)(h * G + gr % G) * D + c;
      const float4 x0 = *reinterpret_cast<const float4*>(src), x1 = *reinterpret_cast<const float4*>(src + 4);
      v[0] = x0.x, v[1] = x0.y, v[2] = x0.z, v[3] = x0.w, v[4] = x1.x, v[5] = x1.y, v[6] = x1.z, v[7] = x1.w;
    }
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const __half2 hh = __floats2half2_rn(v[2 * e], v[2 * e + 1]);
      hi[e] = *reinterpret_cast<const uint32_t*>(&hh);
      lo[e] = pack_half2(v[2 * e] - __low2float(hh), v[2 * e + 1] - __high2float(hh));
    }
    const int wg = r >> 6;
    unsigned char* q = sbase + wg * 2 * C::Q_BYTES + sw128(r & 63, c, 64);
    *reinterpret_cast<uint4*>(q) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    if (QSPLIT) *reinterpret_cast<uint4*>(q + C::Q_BYTES) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  }
  fence_proxy_async();
  __syncthreads();

  const CausalSplit cs = causal_split(R, row0, kRows, G, pos0, kBN, split, n_splits);
  const int max_pos = cs.max_pos, min_lim = cs.min_lim, t_begin = cs.t_begin, t_end = cs.t_end;
  const int n = t_end - t_begin;

  if (warp >= 4 * kWG) {  // producer warpgroup: few registers, the consumers get the rest
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    const int ptid = tid - 128 * kWG;
    const __half* Kh = a.K + h * a.head_stride;
    const __half* Vh = a.V + h * a.head_stride;
    for (int i = 0; i < n; ++i) {
      const int st = i % kStages;
      if (i >= kStages) mbar_wait(bar_empty + 8 * st, ((i / kStages) - 1) & 1);
      const int t = t_begin + i;
      const uint32_t ks = base + C::K_OFF + st * C::TILE_BYTES, vs = base + C::V_OFF + st * C::TILE_BYTES;
#pragma unroll 4
      for (int c = ptid; c < kBN * (D / 8); c += 128) {
        const int kr = c / (D / 8), d = (c % (D / 8)) * 8;
        const int tok = t * kBN + kr;
        const bool ok = tok <= max_pos;
        const int64_t off = (int64_t)(ok ? tok : 0) * D + d;
        const uint32_t so = sw128(kr, d, kBN);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ks + so), "l"(Kh + off), "r"(ok ? 16 : 0));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(vs + so), "l"(Vh + off), "r"(ok ? 16 : 0));
      }
      cp_async_commit();
      if (i >= kLag) {
        cp_async_wait<kLag>();  // tile i - kLag landed (this lane's part)
        fence_proxy_async();
        mbar_arrive(bar_full + 8 * ((i - kLag) % kStages));
      }
    }
    cp_async_wait<0>();
    fence_proxy_async();
    for (int i = max(0, n - kLag); i < n; ++i) mbar_arrive(bar_full + 8 * (i % kStages));
  } else {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");

  // Consumers: warpgroup wg, warp wl of it; this thread's rows 16 wl + g4 (+ 8) of the warpgroup.
  const int wg = warp >> 2, wl = warp & 3, g4 = lane >> 2, t4 = lane & 3;
  int lim[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) lim[hf] = pos0 + min(row0 + 64 * wg + 16 * wl + g4 + 8 * hf, R - 1) / G;
  const float sl2 = a.scale * 1.4426950408889634f;
  const uint32_t q_hi = base + wg * 2 * C::Q_BYTES, q_lo = q_hi + C::Q_BYTES;

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  // S = Q K^T for the tile in stage st: D/16 k-steps of 16 (QSPLIT: the lo term's too).
  auto qk = [&](float (&s)[kBN / 2], int st) {
    const uint32_t ks = base + C::K_OFF + st * C::TILE_BYTES;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t qoff = (kk >> 2) * 64 * 128 + (kk & 3) * 32, koff = (kk >> 2) * kBN * 128 + (kk & 3) * 32;
      const uint64_t db = gmma_desc(ks + koff, 16, 1024);
      wgmma_m64n64k16_ss(s, gmma_desc(q_hi + qoff, 16, 1024), db, kk > 0);
      if (QSPLIT) wgmma_m64n64k16_ss(s, gmma_desc(q_lo + qoff, 16, 1024), db, 1);
    }
  };
  // O += P V for the tile in stage st: 4 k-steps of 16 keys (PSPLIT: the lo term's too).
  auto pv = [&](const uint32_t (&pa)[kBN / 16][4], const uint32_t (&pl)[kBN / 16][4], int st) {
    const uint32_t vs = base + C::V_OFF + st * C::TILE_BYTES;
#pragma unroll
    for (int j = 0; j < kBN / 16; ++j) {
      const uint64_t db = gmma_desc(vs + j * 16 * 128, kBN * 128, 1024);
      wgmma_pv<D>(o, pa[j], db);
      if (PSPLIT) wgmma_pv<D>(o, pl[j], db);
    }
  };
  // Mask (tiles past min_lim), online softmax in the log2 domain, P -> F16 A fragments (hi, lo).
  // Leaves O's rescale factors in al (applied by the caller once the P V in flight is done).
  auto softmax = [&](float (&s)[kBN / 2], int t, uint32_t (&pa)[kBN / 16][4], uint32_t (&pl)[kBN / 16][4],
                     float (&al)[2]) {
    const int tok0 = t * kBN;
    if (tok0 + kBN - 1 > min_lim) {
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (tok0 + 8 * j + 2 * t4 + (e & 1) > lim[e >> 1]) s[4 * j + e] = -INFINITY;
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float tm = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) tm = fmaxf(tm, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
      tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 1));
      tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 2));
      const float nm = fmaxf(m[hf], tm * sl2);
      const float bse = nm == -INFINITY ? 0.0f : nm;
      al[hf] = ex2(m[hf] - bse);  // 0 while m was -inf; 1 while the maximum holds
      m[hf] = nm;
      float ls = 0.0f;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const float p0 = ex2(s[4 * j + 2 * hf] * sl2 - bse), p1 = ex2(s[4 * j + 2 * hf + 1] * sl2 - bse);
        s[4 * j + 2 * hf] = p0;
        s[4 * j + 2 * hf + 1] = p1;
        ls += p0 + p1;
      }
      l[hf] = l[hf] * al[hf] + ls;
    }
    // Accumulator pairs (keys 16 k2 ... +15) are exactly the A fragment of one k-step.
#pragma unroll
    for (int k2 = 0; k2 < kBN / 16; ++k2)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = s[8 * k2 + 2 * e], y = s[8 * k2 + 2 * e + 1];
        const __half2 hh = __floats2half2_rn(x, y);
        pa[k2][e] = *reinterpret_cast<const uint32_t*>(&hh);
        if (PSPLIT) pl[k2][e] = pack_half2(x - __low2float(hh), y - __high2float(hh));
        else pl[k2][e] = 0u;
      }
  };
  auto rescale = [&](const float (&al)[2]) {
    if (__any_sync(0xffffffffu, al[0] != 1.0f || al[1] != 1.0f)) {
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[4 * i] *= al[0];
        o[4 * i + 1] *= al[0];
        o[4 * i + 2] *= al[1];
        o[4 * i + 3] *= al[1];
      }
    }
  };
  auto release = [&](int st) {
    if (lane == 0) mbar_arrive(bar_empty + 8 * st);
  };

  if (n > 0) {
    // Two sets of P fragments, alternating by tile: the set that P(i-1) V(i-1) reads in flight is
    // not the one the softmax of tile i writes (a copy between them would make ptxas serialize).
    float s[kBN / 2], al[2];
    uint32_t pa[kBN / 16][4], pl[kBN / 16][4], pb[kBN / 16][4], plb[kBN / 16][4];
    mbar_wait(bar_full, 0);
    fence_regs(s);
    wgmma_fence();
    qk(s, 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);
    softmax(s, t_begin, pa, pl, al);  // O is still zero: no rescale
    // Tile i: S(i) = Q K(i)^T and O += P(i-1) V(i-1) in flight together; softmax(i) into (pn, pln).
    auto step = [&](int i, uint32_t (&pc)[kBN / 16][4], uint32_t (&plc)[kBN / 16][4], uint32_t (&pn)[kBN / 16][4],
                    uint32_t (&pln)[kBN / 16][4]) {
      const int st = i % kStages, prev = (i - 1) % kStages;
      mbar_wait(bar_full + 8 * st, (i / kStages) & 1);
      fence_regs(o);  // the rescale and the last writes of P and s happen before
      fence_regs(pc);
      fence_regs(plc);
      fence_regs(s);
      wgmma_fence();
      qk(s, st);
      wgmma_commit();
      pv(pc, plc, prev);
      wgmma_commit();
      wgmma_wait<1>();  // S of tile i is ready; P(i-1) V(i-1) still runs
      fence_regs(s);
      softmax(s, t_begin + i, pn, pln, al);
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(pc);
      fence_regs(plc);
      release(prev);
      rescale(al);
    };
    int i = 1;
    for (; i + 1 < n; i += 2) {
      step(i, pa, pl, pb, plb);
      step(i + 1, pb, plb, pa, pl);
    }
    auto last = [&](uint32_t (&pc)[kBN / 16][4], uint32_t (&plc)[kBN / 16][4]) {
      fence_regs(o);
      fence_regs(pc);
      fence_regs(plc);
      wgmma_fence();
      pv(pc, plc, (n - 1) % kStages);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(pc);
      fence_regs(plc);
    };
    if (i < n) {  // one tile left: its P lands in (pb, plb)
      step(i, pa, pl, pb, plb);
      last(pb, plb);
    } else {
      last(pa, pl);
    }
  }

#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
    store_mma_row<D>(a, row0 + 64 * wg + 16 * wl + g4 + 8 * hf, h, split, n_splits, m[hf], l[hf], t4,
                     [&](int nd) { return make_float2(o[4 * nd + 2 * hf], o[4 * nd + 2 * hf + 1]); });
  }  // consumers
#endif  // PYRESA_WGMMA
}

// Writes 1 where this build has the sm_90a code path for the running device.
__global__ void wgmma_probe_kernel(int* flag) { *flag = PYRESA_WGMMA; }

template <int D, bool QSPLIT, bool PSPLIT>
void launch_wgmma(const AttentionArgs& a, cudaStream_t stream) {
  const int R = a.n_tok * (a.n_head / a.n_kv_head);
  dim3 grid(ceil_div(R, kRows), a.n_splits, a.n_kv_head);
  auto kernel = attention_wgmma_kernel<D, QSPLIT, PSPLIT>;
  static bool configured[64] = {};  // one per template instance and device
  int dev = 0;
  cudaGetDevice(&dev);
  if (!configured[dev & 63]) {
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)WgCfg<D>::SMEM));
    configured[dev & 63] = true;
  }
  launch(kernel, grid, kThreads, WgCfg<D>::SMEM, stream, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  if (a.n_splits > 1) attention_combine(a, stream);
}

template <int D>
void launch_wgmma_prec(const AttentionArgs& a, cudaStream_t stream) {
  if (a.split_query && a.precise) launch_wgmma<D, true, true>(a, stream);
  else if (a.split_query) launch_wgmma<D, true, false>(a, stream);
  else if (a.precise) launch_wgmma<D, false, true>(a, stream);
  else launch_wgmma<D, false, false>(a, stream);
}

}  // namespace

bool attention_wgmma_available() {
  static int cached[64];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  int& c = cached[dev & 63];
  if (!c) {
    int major = 0, minor = 0, flag = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major == 9 && minor == 0) {
      int* d = nullptr;
      PYRESA_CUDA_CHECK(cudaMalloc(&d, sizeof(int)));
      wgmma_probe_kernel<<<1, 1>>>(d);
      PYRESA_CUDA_LAUNCH_CHECK();
      PYRESA_CUDA_CHECK(cudaMemcpy(&flag, d, sizeof(int), cudaMemcpyDeviceToHost));
      PYRESA_CUDA_CHECK(cudaFree(d));
    }
    c = flag ? 1 : 2;
  }
  return c == 1;
}

size_t attention_wgmma_smem_bytes(int D) { return D == 64 ? WgCfg<64>::SMEM : WgCfg<128>::SMEM; }

void attention_wgmma(const AttentionArgs& a, cudaStream_t stream) {
  if (!attention_wgmma_available()) throw UnsupportedError("CUDA backend: the wgmma attention needs sm_90a code and an sm_90 GPU");
  switch (a.D) {
    case 64: launch_wgmma_prec<64>(a, stream); break;
    case 128: launch_wgmma_prec<128>(a, stream); break;
    default: throw UnsupportedError("CUDA backend: head_dim must be 64 or 128, got " + std::to_string(a.D));
  }
}

}  // namespace pyresa::cuda
