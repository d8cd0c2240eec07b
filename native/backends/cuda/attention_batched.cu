// Dense causal attention for many query rows at once (rectification: 33 tokens x 7 heads = 231
// rows per KV head; prefill chunks), FlashAttention-2 style on mma.sync.
//
// Why a second kernel: the general one (attention.cu) keeps 16 rows per warp and, for 231 rows,
// puts 16 warps in a CTA: at 512 threads a thread has 128 registers, and every warp re-reads each
// K/V fragment from shared memory for one (two, precise) tensor instructions. Here a warp owns
// MT = 2 row tiles of 16 (32 rows), so each K/V fragment it loads feeds 2 MT tensor instructions
// (precise: 4); K/V tiles of 32 keys go through a cp.async ring with one barrier per tile; the
// causal mask is applied only to tiles past the CTA's first query position; the sequence is split
// over CTAs (one wave) and merged by the log-sum-exp combine of attention.cu.
// Variants (measured on the H100 in docs/perf-cuda.md, run 9-rect-attn; the engine uses 3):
//   1: 8 warps x 32 rows = 256 rows per CTA (a GQA group's 231 rows read K/V from DRAM once);
//   2: 15 warps x 16 rows = 240 rows (less padding, 128 registers);
//   3: 4 warps x 32 rows = 128 rows, 2-stage ring, two CTAs per SM: the two CTAs' softmax phases
//      fall at different times, so the tensor pipe idles less than with 8 warps in lock step
//      (the second row tile's K/V come mostly from L2): the fastest;
// (A fourth, variant 1 with two warp groups taking turns on the tensor cores, "ping-pong", was
// slower and spilled registers in the precise mode: removed after run 9.)
//   4: wgmma (sm_90a), two consumer warpgroups x 64 rows and a producer warp: attention_wgmma.cu
//      (run 11-rect-wgmma); falls back to 3 where the build or the GPU has no sm_90a code.
//
// Precision (as the general kernel): QSPLIT keeps the query as two F16 terms (hi + lo: ~F32, as
// the CPU's attention), PSPLIT the probabilities (P = P_hi + P_lo): each doubles its product's
// tensor work; prefill turns both off, rectification keeps both.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <type_traits>

#include "backends/cuda/attention.cuh"
#include "backends/cuda/attention_epilogue.cuh"
#include "backends/cuda/attention_split.cuh"
#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"

namespace pyresa::cuda {

namespace {

template <int D, int NW, int MT, int TT, int STAGES>
struct BatchedCfg {
  static constexpr int LD = D + 8;  // padded row: ldmatrix rows land in distinct banks
  static constexpr int ROWS = 16 * MT * NW;
  static constexpr int THREADS = 32 * NW;
  static constexpr size_t q_elems = (size_t)ROWS * LD;          // Q hi, then Q lo
  static constexpr size_t kv_elems = (size_t)STAGES * TT * LD;  // per operand
  static constexpr size_t smem_bytes = (2 * q_elems + 2 * kv_elems) * sizeof(__half);
  static_assert(TT % 16 == 0, "tiles of whole 16-token k-steps");
};

// 2^x, flushing results below 2^-126 to zero: one MUFU instruction (exp2f without fast-math adds
// a denormal-range fix-up around it). A probability below 2^-126 of the row maximum is nothing.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Per-warp tile steps. A warp owns MT row tiles of 16 rows (rows 16*mt0 ... of the CTA's Q).

// Q rows -> F16 hi (and lo) in shared memory; rows past R are zero (computed, never written).
template <int D, int ROWS, int LD, bool QSPLIT>
__device__ __forceinline__ void stage_query(const AttentionArgs& a, __half* Qs, size_t lo_off, int row0, int R, int G,
                                            int h, int tid, int n_threads) {
  for (int idx = tid; idx < ROWS * (D / 4); idx += n_threads) {
    const int r = idx / (D / 4), c = (idx % (D / 4)) * 4;
    const int gr = row0 + r;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (gr < R) {
      const int i = gr / G, g = gr % G;
      v = *reinterpret_cast<const float4*>(a.q + i * a.q_stride + (int64_t)(h * G + g) * D + c);
    }
    const __half2 h0 = __floats2half2_rn(v.x, v.y), h1 = __floats2half2_rn(v.z, v.w);
    __half2* dst = reinterpret_cast<__half2*>(Qs + r * LD + c);
    dst[0] = h0;
    dst[1] = h1;
    if (QSPLIT) {
      __half2* lo = reinterpret_cast<__half2*>(Qs + lo_off + r * LD + c);
      lo[0] = __floats2half2_rn(v.x - __low2float(h0), v.y - __high2float(h0));
      lo[1] = __floats2half2_rn(v.z - __low2float(h1), v.w - __high2float(h1));
    }
  }
}

// S = Q K^T for the warp's MT x 16 rows and the TT keys of the tile in ks.
template <int D, int MT, int TT, int LD, bool QSPLIT>
__device__ __forceinline__ void qk_tile(float (&s)[MT][TT / 8][4], const __half* Qs, size_t lo_off, int mt0,
                                        const __half* ks, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < TT / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t qa[MT][4], ql[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const __half* qp = Qs + (16 * (mt0 + mt) + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + 16 * kk + (lane >> 4) * 8;
      ldmatrix_x4(qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], qp);
      if (QSPLIT) ldmatrix_x4(ql[mt][0], ql[mt][1], ql[mt][2], ql[mt][3], qp + lo_off);
    }
#pragma unroll
    for (int np = 0; np < TT / 16; ++np) {
      uint32_t b0, b1, b2, b3;
      ldmatrix_x4(b0, b1, b2, b3, ks + (16 * np + (lane & 7) + (lane >> 4) * 8) * LD + 16 * kk + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816(s[mt][2 * np], qa[mt], b0, b1);
        mma_16816(s[mt][2 * np + 1], qa[mt], b2, b3);
        if (QSPLIT) {
          mma_16816(s[mt][2 * np], ql[mt], b0, b1);
          mma_16816(s[mt][2 * np + 1], ql[mt], b2, b3);
        }
      }
    }
  }
}

// Causal mask (when the tile reaches past the CTA's first query), online softmax in the log2
// domain: rescales o and l, leaves the probabilities in s.
template <int D, int MT, int TT>
__device__ __forceinline__ void softmax_tile(float (&s)[MT][TT / 8][4], float (&o)[MT][D / 8][4], float (&m)[MT][2],
                                             float (&l)[MT][2], const int (&lim)[MT][2], bool mask, int tok0, int t4,
                                             float sl2) {
  if (mask) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < TT / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (tok0 + 8 * nt + 2 * t4 + (e & 1) > lim[mt][e >> 1]) s[mt][nt][e] = -INFINITY;
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float al[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float tm = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < TT / 8; ++nt) tm = fmaxf(tm, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
      tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 1));
      tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 2));
      const float nm = fmaxf(m[mt][hf], tm * sl2);
      const float base = nm == -INFINITY ? 0.0f : nm;
      al[hf] = ex2(m[mt][hf] - base);  // 0 while m was -inf; 1 while the maximum holds
      m[mt][hf] = nm;
      l[mt][hf] *= al[hf];
#pragma unroll
      for (int nt = 0; nt < TT / 8; ++nt) {
        const float p0 = ex2(s[mt][nt][2 * hf] * sl2 - base);
        const float p1 = ex2(s[mt][nt][2 * hf + 1] * sl2 - base);
        s[mt][nt][2 * hf] = p0;
        s[mt][nt][2 * hf + 1] = p1;
        l[mt][hf] += p0 + p1;
      }
    }
    // Deep into a long sequence the running maximum rarely moves: skip the rescale then.
    if (__any_sync(0xffffffffu, al[0] != 1.0f || al[1] != 1.0f)) {
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[mt][i][0] *= al[0];
        o[mt][i][1] *= al[0];
        o[mt][i][2] *= al[1];
        o[mt][i][3] *= al[1];
      }
    }
  }
}

// Probabilities (score accumulators: two n-tiles of 8 = one k-step of 16) -> F16 A fragments,
// hi and (PSPLIT) lo = P - hi: probabilities to ~2^-22 instead of 2^-11.
template <int MT, int TT, bool PSPLIT>
__device__ __forceinline__ void pack_p(const float (&s)[MT][TT / 8][4], uint32_t (&pa)[MT][TT / 16][4],
                                       uint32_t (&pl)[MT][TT / 16][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int k2 = 0; k2 < TT / 16; ++k2) {
      const float* p4[4] = {&s[mt][2 * k2][0], &s[mt][2 * k2][2], &s[mt][2 * k2 + 1][0], &s[mt][2 * k2 + 1][2]};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const __half2 hi = __floats2half2_rn(p4[e][0], p4[e][1]);
        pa[mt][k2][e] = *reinterpret_cast<const uint32_t*>(&hi);
        if (PSPLIT) pl[mt][k2][e] = pack_half2(p4[e][0] - __low2float(hi), p4[e][1] - __high2float(hi));
      }
    }
}

// O += P V for the tile in vs.
template <int D, int MT, int TT, int LD, bool PSPLIT>
__device__ __forceinline__ void pv_tile(float (&o)[MT][D / 8][4], const uint32_t (&pa)[MT][TT / 16][4],
                                        const uint32_t (&pl)[MT][TT / 16][4], const __half* vs, int lane) {
#pragma unroll
  for (int k2 = 0; k2 < TT / 16; ++k2)
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b0, b1, b2, b3;
      ldmatrix_x4_trans(b0, b1, b2, b3, vs + (16 * k2 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + 16 * dp + (lane >> 4) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816(o[mt][2 * dp], pa[mt][k2], b0, b1);
        mma_16816(o[mt][2 * dp + 1], pa[mt][k2], b2, b3);
        if (PSPLIT) {
          mma_16816(o[mt][2 * dp], pl[mt][k2], b0, b1);
          mma_16816(o[mt][2 * dp + 1], pl[mt][k2], b2, b3);
        }
      }
    }
}

// One K/V tile (keys t*TT ...) into a stage, chunks c0, c0 + stride, ... of its TT * D/8 16-byte
// pieces. Keys past max_pos are zero-filled (no read) and masked.
template <int D, int TT, int LD>
__device__ __forceinline__ void load_tile(__half* Ks, __half* Vs, const __half* Kh, const __half* Vh, int stage, int t,
                                          int max_pos, int c0, int stride) {
  for (int c = c0; c < TT * (D / 8); c += stride) {
    const int tt = c / (D / 8), col = (c % (D / 8)) * 8;
    const int tok = t * TT + tt;
    const bool ok = tok <= max_pos;
    const int64_t off = (int64_t)(ok ? tok : 0) * D + col;
    cp_async16(Ks + (stage * TT + tt) * LD + col, Kh + off, ok ? 16 : 0);
    cp_async16(Vs + (stage * TT + tt) * LD + col, Vh + off, ok ? 16 : 0);
  }
}

// All warps in lock step: one barrier per tile, STAGES-deep cp.async ring.
template <int D, int NW, int MT, int TT, int STAGES, int MINB, bool QSPLIT, bool PSPLIT>
__global__ void __launch_bounds__(32 * NW, MINB) attention_batched_kernel(AttentionArgs a) {
  pdl_wait();  // the query and the new K/V come from the kernels just before (PDL)
  using C = BatchedCfg<D, NW, MT, TT, STAGES>;
  constexpr int LD = C::LD, ROWS = C::ROWS, THREADS = C::THREADS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* Qs = reinterpret_cast<__half*>(smem_raw);
  __half* Ks = Qs + 2 * C::q_elems;
  __half* Vs = Ks + C::kv_elems;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.z, split = blockIdx.y, n_splits = gridDim.y;
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  const int row0 = blockIdx.x * ROWS;
  const int pos0 = *a.pos_dev + a.pos_offset;
  stage_query<D, ROWS, LD, QSPLIT>(a, Qs, C::q_elems, row0, R, G, h, tid, THREADS);

  const CausalSplit cs = causal_split(R, row0, ROWS, G, pos0, TT, split, n_splits);
  const int max_pos = cs.max_pos, min_lim = cs.min_lim, t_begin = cs.t_begin, t_end = cs.t_end;
  const __half* Kh = a.K + h * a.head_stride;
  const __half* Vh = a.V + h * a.head_stride;

  const int g4 = lane >> 2, t4 = lane & 3;
  int lim[MT][2];  // last key position each of the thread's rows sees
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) lim[mt][hf] = pos0 + min(row0 + 16 * (warp * MT + mt) + g4 + 8 * hf, R - 1) / G;
  const float sl2 = a.scale * 1.4426950408889634f;

  float o[MT][D / 8][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (t_begin + s < t_end) load_tile<D, TT, LD>(Ks, Vs, Kh, Vh, s, t_begin + s, max_pos, tid, THREADS);
    cp_async_commit();
  }
  for (int t = t_begin; t < t_end; ++t) {
    const int it = t - t_begin;
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile t landed for all threads; the stage of tile t-1 is free
    if (t + STAGES - 1 < t_end)
      load_tile<D, TT, LD>(Ks, Vs, Kh, Vh, (it + STAGES - 1) % STAGES, t + STAGES - 1, max_pos, tid, THREADS);
    cp_async_commit();
    const int stage = it % STAGES;
    float s[MT][TT / 8][4];
    qk_tile<D, MT, TT, LD, QSPLIT>(s, Qs, C::q_elems, warp * MT, Ks + stage * TT * LD, lane);
    softmax_tile<D, MT, TT>(s, o, m, l, lim, t * TT + TT - 1 > min_lim, t * TT, t4, sl2);
    uint32_t pa[MT][TT / 16][4], pl[MT][TT / 16][4];
    pack_p<MT, TT, PSPLIT>(s, pa, pl);
    pv_tile<D, MT, TT, LD, PSPLIT>(o, pa, pl, Vs + stage * TT * LD, lane);
  }
  cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      store_mma_row<D>(a, row0 + 16 * (warp * MT + mt) + g4 + 8 * hf, h, split, n_splits, m[mt][hf], l[mt][hf], t4,
                       [&](int nd) { return make_float2(o[mt][nd][2 * hf], o[mt][nd][2 * hf + 1]); });
}

// Opt-in to more than 48 KB of shared memory, once per kernel (the caller's static flags: one
// set per template instantiation, i.e. per kernel) and device.
template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes, bool (&configured)[64]) {
  int dev = 0;
  cudaGetDevice(&dev);
  if (!configured[dev & 63]) {
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    configured[dev & 63] = true;
  }
}

template <int D, int NW, int MT, int TT, int STAGES, int MINB, bool QSPLIT, bool PSPLIT>
void launch_cfg(const AttentionArgs& a, cudaStream_t stream) {
  using C = BatchedCfg<D, NW, MT, TT, STAGES>;
  const int R = a.n_tok * (a.n_head / a.n_kv_head);
  dim3 grid(ceil_div(R, C::ROWS), a.n_splits, a.n_kv_head);
  static bool configured[64] = {};
  auto kernel = attention_batched_kernel<D, NW, MT, TT, STAGES, MINB, QSPLIT, PSPLIT>;
  set_smem(kernel, C::smem_bytes, configured);
  launch(kernel, grid, C::THREADS, C::smem_bytes, stream, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  if (a.n_splits > 1) attention_combine(a, stream);
}

template <int D, int NW, int MT, int TT, int STAGES, int MINB>
void launch_prec(const AttentionArgs& a, cudaStream_t stream) {
  if (a.split_query && a.precise) launch_cfg<D, NW, MT, TT, STAGES, MINB, true, true>(a, stream);
  else if (a.split_query) launch_cfg<D, NW, MT, TT, STAGES, MINB, true, false>(a, stream);
  else if (a.precise) launch_cfg<D, NW, MT, TT, STAGES, MINB, false, true>(a, stream);
  else launch_cfg<D, NW, MT, TT, STAGES, MINB, false, false>(a, stream);
}

// Variants (attention_batched_rows / _ctas_per_sm below must agree):
// 1: 8 warps x 32 rows, lock step; 2: 15 warps x 16 rows; 3: 4 warps x 32 rows, two CTAs per SM.
template <int D>
void launch_d(const AttentionArgs& a, int variant, cudaStream_t stream) {
  switch (variant) {
    case 4:
      if (attention_wgmma_available()) attention_wgmma(a, stream);
      else launch_prec<D, 4, 2, 32, 2, 2>(a, stream);
      break;
    case 2: launch_prec<D, 15, 1, 32, 4, 1>(a, stream); break;
    case 3: launch_prec<D, 4, 2, 32, 2, 2>(a, stream); break;
    default: launch_prec<D, 8, 2, 32, 4, 1>(a, stream); break;
  }
}

}  // namespace

size_t attention_batched_smem_bytes(int variant, int D) {
  if (variant == 4) return attention_wgmma_smem_bytes(D);
  auto pick = [&](auto d) -> size_t {
    constexpr int DD = decltype(d)::value;
    switch (variant) {
      case 2: return BatchedCfg<DD, 15, 1, 32, 4>::smem_bytes;
      case 3: return BatchedCfg<DD, 4, 2, 32, 2>::smem_bytes;
      default: return BatchedCfg<DD, 8, 2, 32, 4>::smem_bytes;
    }
  };
  return D == 64 ? pick(std::integral_constant<int, 64>{}) : pick(std::integral_constant<int, 128>{});
}

int& attention_wgmma_waves() {
  static int waves = 2;
  return waves;
}

int attention_batched_rows(int variant) { return variant == 2 ? 240 : variant == 3 || variant == 4 ? 128 : 256; }
int attention_batched_ctas_per_sm(int variant) { return variant == 3 ? 2 : 1; }

int attention_batched_splits(int n_tok, int n_head, int n_kv_head, int n_past_plus_n, int n_sm, int variant) {
  const int R = n_tok * (n_head / n_kv_head);
  const int row_tiles = (R + attention_batched_rows(variant) - 1) / attention_batched_rows(variant);
  const int base = row_tiles * n_kv_head;
  const int slots = n_sm * attention_batched_ctas_per_sm(variant);
  // One wave, rounded up (the second CTA per SM absorbs the excess); variant 4 (one 197 KB CTA
  // per SM) takes attention_wgmma_waves() whole waves, rounded down: with one wave each split
  // accumulates twice the keys of variant 3's in the tensor cores' F32, whose truncation doubles
  // the error (3.0e-5 vs 1.3e-5 at 256K, run 11); two waves match variant 3's split length.
  int s = variant == 4 ? std::max(1, attention_wgmma_waves() * slots / base) : (slots + base - 1) / base;
  s = std::min(s, std::max(1, (n_past_plus_n + 32 * 8 - 1) / (32 * 8)));  // at least 8 tiles per split
  return std::max(1, s);
}

void attention_batched(const AttentionArgs& a, int variant, cudaStream_t stream) {
  if (a.n_tok <= 0) return;
  if (a.n_kv_head <= 0 || a.n_head % a.n_kv_head) throw std::invalid_argument("attention: bad head counts");
  if (a.blocks) throw std::invalid_argument("attention_batched: dense attention only");
  if (a.n_splits > 1 && !a.work) throw std::invalid_argument("attention: n_splits > 1 needs a workspace");
  switch (a.D) {
    case 64: launch_d<64>(a, variant, stream); break;
    case 128: launch_d<128>(a, variant, stream); break;
    default: throw UnsupportedError("CUDA backend: head_dim must be 64 or 128, got " + std::to_string(a.D));
  }
}

}  // namespace pyresa::cuda
