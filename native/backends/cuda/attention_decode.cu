// Decode attention (at most 8 query rows per KV head: one token of a GQA group), dense or
// block-sparse, on tensor cores with the products transposed: S^T = K Q^T and O^T = V^T P^T.
//
// Why transposed: the general kernel (attention.cu) puts the query rows in the 16-row M side of
// mma.m16n8k16, so a decode step's 7 rows fill 7 of 16 and half of every product is padding; here
// the tokens (16 per m-tile) and the head dimension take the M side and the rows the 8-wide N
// side (7 of 8 used), which halves the tensor-core instructions per tile (64 instead of 128 with
// the two-term query and probabilities). The query fragments are loaded into registers once; the
// probabilities come out of the S^T accumulators transposed with respect to the B operand of the
// P.V product and are put right with movmatrix (an 8x8 transpose across the warp).
//
// Why several warps per CTA and a few stages: a decode step is a stream over the K/V bytes (1.5 GB
// per step at 256K sparse, 15 GB dense); the bytes in flight per SM come from the cp.async stages,
// and the warps' own latency chains (one tile's products and softmax) must overlap. Warp w takes
// span w (16 tokens) of every W x 16-token tile, copies it (its own part of each stage), and keeps
// its own online softmax over it; the warps' (m, l, O) are merged once at the end through shared
// memory. The default shape (run 13) is 4 warps x 3 stages (2 CTAs per SM: 8 warps, 2 tiles of 32
// KB in flight per CTA), each warp's S^T product as two interleaved mma chains; run 12's 2 warps x
// 4 stages (3 CTAs per SM, 6 warps) measured 31.3 against 28.8 us per layer at 256K sparse and
// 208.8 against 198.2 dense (H100, bench/sparse_step_bench.py). Before that, a one-warp CTA (runs
// 9-11, 4, 6 or 12 stages) was bound by its own instruction latency (Nsight Compute, run 11, 256K
// sparse: one warp per scheduler, 5.4 cycles per issued instruction, DRAM at 51 %); two warps
// sharing the CTA's stages gained 35.6 -> 31.8 us per layer (run 12-attn12), and the one-warp
// kernel was removed. The warps never wait for each other inside the loop. The block list of the CTA's range is read into
// shared memory once (the general kernel reads it from global memory before each tile's copies).

#include <climits>

#include "backends/cuda/attention.cuh"
#include "backends/cuda/attention_decode.cuh"
#include "backends/cuda/attention_epilogue.cuh"
#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"

namespace pyresa::cuda {

namespace {

constexpr int kSpanCache = 512;   // span starts kept in shared memory (sparse); more: read per tile

// The kernel's shape (decode_attention_shape()): W warps per CTA, each taking one 16-token span of
// every W * 16-token tile; ST cp.async stages per CTA; ILP: each warp's S^T product as two
// independent mma chains (even and odd k-steps) instead of one. Default 2 x 4, one chain.
template <int D, int W, int ST>
struct DecodeSmem {
  static constexpr int TT = 16 * W;  // tokens per tile
  static constexpr int LD = D + 8;   // padded row: ldmatrix rows land in distinct banks
  static constexpr size_t q_elems = (size_t)8 * LD;
  static constexpr size_t kv_elems = (size_t)ST * TT * LD;  // per operand
  static constexpr size_t bytes =
      (2 * q_elems + 2 * kv_elems) * sizeof(__half) + ST * TT * sizeof(int) + kSpanCache * sizeof(int);
  // Resident CTAs per SM the shared memory allows (228 KB per SM on Hopper, 1 KB of it reserved
  // per CTA), at most 8: the launch bound, so the registers never cap residency below it.
  static constexpr int min_ctas = (228 * 1024) / (bytes + 1024) < 8 ? (228 * 1024) / (bytes + 1024) : 8;
  static_assert((size_t)(W - 1) * 32 * (D / 4 + 4) * sizeof(float) <= kv_elems * sizeof(__half),
                "the warps' (m, l, O) exchange fits in the K stages");
};

__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ int decode_span_start(const AttentionArgs& a, int h, int e, int n_spans, int spb) {
  if (e >= n_spans) return -1;
  if (!a.blocks) return 16 * e;
  return a.blocks[h * a.blocks_stride + e / spb] * a.block_size + (e % spb) * 16;
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The combine inside the attention kernel (decode_combine_mode 1), after this CTA has written its
// partial (m, l, O) rows to a.work. Each CTA of KV head h takes a ticket from a counter that
// wraps to 0 after the last one (so it is zero again for the next launch); the CTAs with the
// last `mergers` tickets each merge a share of the head's R x 8 chunks (16 or 8 dimensions of one
// row) once the last CTA has bumped the head's epoch. Those CTAs have finished their own work,
// and the host keeps them under half the resident CTAs, so the ones still to arrive always have
// room to run. The arithmetic is combine_parallel_kernel's, step for step (max, the weights,
// L summed per 32 splits then over the groups of 32 in order, O summed per group of splits
// g, g + CS, ... then over the groups in order), so the output is the same bits.
template <int D>
__device__ __forceinline__ void merge_splits_in_kernel(const AttentionArgs& a, int h, int R, float* smem) {
  constexpr int CS = 1024 / D, LG = 32 / CS;  // split groups (as combine_parallel_kernel); lanes per group
  constexpr int P = 8, CD = D / P, NI = CD / (2 * LG);  // chunks per row, their dims, float2 items per lane
  static_assert(NI >= 1 && NI * 2 * LG == CD, "chunk shape");
  const int lane = threadIdx.x, S = gridDim.x, G = a.n_head / a.n_kv_head;
  unsigned* arrive = a.sync + 2 * h;
  unsigned* epoch = arrive + 1;

  __threadfence();  // every lane's partial stores, visible before this CTA is counted
  __syncwarp();
  unsigned ticket = 0, e0 = 0;
  if (lane == 0) {
    e0 = load_acquire(epoch);  // read before arriving: the last arrival bumps it only after this
    ticket = atomicInc(arrive, (unsigned)S - 1);
  }
  ticket = __shfl_sync(0xffffffffu, ticket, 0);
  const int k = S - 1 - (int)ticket;  // 0 = the last to arrive
  const int nm = min(a.combine_mergers, S);
  if (k >= nm) return;
  if (lane == 0) {
    if (k == 0) {
      __threadfence();
      atomicAdd(epoch, 1u);
    } else {
      while (load_acquire(epoch) == e0) __nanosleep(64);
    }
  }
  __syncwarp();
  __threadfence();

  float* cs = smem;         // [S] weights 2^(m_s - M)
  float* ls = smem + 1024;  // [S] l_s
  const int64_t ss = (int64_t)R * (D + 2);
  const int g = lane / LG, q = lane % LG;
  for (int c = k; c < R * P; c += nm) {
    const int r = c / P, d0 = (c % P) * CD;
    const float* base = a.work + ((int64_t)h * S * R + r) * (D + 2);
    float M = -INFINITY;
    for (int s = lane; s < S; s += 32) {
      const float2 ml = __ldcg(reinterpret_cast<const float2*>(base + s * ss + D));
      const float m = ml.y > 0.0f ? ml.x : -INFINITY;
      cs[s] = m;
      ls[s] = ml.y;
      M = fmaxf(M, m);
    }
    M = warp_max(M);
    float L = 0.0f;
    for (int s0 = 0; s0 < S; s0 += 32) {
      const int s = s0 + lane;
      float lloc = 0.0f;
      if (s < S) {
        const float cv = (cs[s] == -INFINITY || M == -INFINITY) ? 0.0f : exp2f(cs[s] - M);
        cs[s] = cv;
        lloc = cv * ls[s];
      }
      lloc = warp_sum(lloc);
      L += __shfl_sync(0xffffffffu, lloc, 0);
    }
    __syncwarp();
    float2 acc[NI];
#pragma unroll
    for (int i = 0; i < NI; ++i) acc[i] = make_float2(0.0f, 0.0f);
#pragma unroll 8
    for (int s = g; s < S; s += CS) {
      const float cv = cs[s];
#pragma unroll
      for (int i = 0; i < NI; ++i) {
        const float2 o = __ldcg(reinterpret_cast<const float2*>(base + s * ss + d0 + i * 2 * LG + 2 * q));
        acc[i].x += o.x * cv;
        acc[i].y += o.y * cv;
      }
    }
    const int iq = r / G, hq = (int)(h * G + r % G);
    float* dst = a.out + iq * a.out_stride + (int64_t)hq * D + d0;
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      float sx = 0.0f, sy = 0.0f;
#pragma unroll
      for (int j = 0; j < CS; ++j) {
        sx += __shfl_sync(0xffffffffu, acc[i].x, j * LG + q);
        sy += __shfl_sync(0xffffffffu, acc[i].y, j * LG + q);
      }
      if (g == 0)
        *reinterpret_cast<float2*>(dst + i * 2 * LG + 2 * q) = L > 0.0f ? make_float2(sx / L, sy / L) : make_float2(0.0f, 0.0f);
    }
    __syncwarp();  // cs / ls are rewritten for the next chunk
  }
}

// The finished rows A (2 t4) and B (2 t4 + 1) of this thread in the transposed layout: o[dp][half]
// holds dimension 16 dp + g4 of row half, o[dp][2 + half] dimension 16 dp + 8 + g4; l already
// summed over the lanes (g4) that share the row.
template <int D>
__device__ __forceinline__ void store_decode_rows(const AttentionArgs& a, const float (&o)[D / 16][4], float mA, float mB,
                                                  float lA, float lB, int R, int h, int split, int n_splits, int g4,
                                                  int t4) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = 2 * t4 + half;
    if (r >= R) continue;
    store_attention_row<D, D / 8, 1>(a, r, h, split, n_splits, half ? mB : mA, half ? lB : lA, g4 == 0, [&](int j) {
      return RowPiece<1>{16 * (j >> 1) + 8 * (j & 1) + g4, {o[j >> 1][2 * (j & 1) + half]}};
    });
  }
}

template <int D, int W, int ST, bool ILP>
__global__ void __launch_bounds__(32 * W, DecodeSmem<D, W, ST>::min_ctas) decode_attention_kernel(AttentionArgs a) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  using S = DecodeSmem<D, W, ST>;
  constexpr int LD = S::LD, kTT = S::TT, kStages = ST;
  constexpr int CPR = D / 8, RPI = 32 / CPR;  // 16-byte chunks per K/V row; rows per warp copy instruction
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* Qs = reinterpret_cast<__half*>(smem_raw);
  __half* Qlo = Qs + S::q_elems;
  __half* Ks = Qlo + S::q_elems;
  __half* Vs = Ks + S::kv_elems;
  int* tokpos = reinterpret_cast<int*>(Vs + S::kv_elems);
  int* spans = tokpos + kStages * kTT;
  constexpr int NT = 32 * W;  // threads

  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g4 = lane >> 2, t4 = lane & 3;
  const int split = blockIdx.x, n_splits = gridDim.x, h = blockIdx.y;
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;  // R <= 8
  const bool q_split = a.split_query;

  // The prologue is a chain of dependent loads (position and selection count, then the block
  // list, then the first tiles): the two counts are read together, and the first tiles' copies
  // are issued before the query is read, so the query's L2 round trip overlaps their DRAM one.
  const int* __restrict__ nsel_p = a.blocks ? a.n_sel_dev : a.pos_dev;
  const int pos_raw = *a.pos_dev, n_sel = *nsel_p;
  const int pos0 = pos_raw + a.pos_offset;
  const int max_pos = pos0 + (R - 1) / G;
  const int spb = a.block_size / 16;
  const int n_spans = a.blocks ? n_sel * spb : max_pos / 16 + 1;
  const int n_tiles = (n_spans + W - 1) / W;
  const int t_begin = (int)((int64_t)n_tiles * split / n_splits);
  const int t_end = (int)((int64_t)n_tiles * (split + 1) / n_splits);

  // The span starts of this CTA's tiles, read once (in parallel) instead of before each tile.
  const int e0 = W * t_begin, n_e = W * (t_end - t_begin);
  const bool cached = a.blocks && n_e <= kSpanCache;
  if (cached)
    for (int j = tid; j < n_e; j += NT) spans[j] = decode_span_start(a, h, e0 + j, n_spans, spb);
  __syncthreads();

  const __half* Kh = a.K + h * a.head_stride;
  const __half* Vh = a.V + h * a.head_stride;
  const int crow = lane / CPR, ccol = (lane % CPR) * 8;  // this lane's first row and column of a span
  auto load_span = [&](int stage, int t) {                // span W t + w into this warp's part of `stage`
    const int e = W * t + w;
    const int st = cached ? spans[e - e0] : decode_span_start(a, h, e, n_spans, spb);
    const int64_t src = (int64_t)(st < 0 ? 0 : st) * D + crow * D + ccol;
    __half* kd = Ks + (stage * kTT + 16 * w + crow) * LD + ccol;
    __half* vd = Vs + (stage * kTT + 16 * w + crow) * LD + ccol;
#pragma unroll
    for (int i = 0; i < 16 / RPI; ++i) {
      // Keys past max_pos are zero-filled, not read: they are masked, but a stale NaN or inf left
      // in V by an earlier (truncated) sequence would still turn 0 x V into NaN in P.V.
      const int bytes = st >= 0 && st + crow + i * RPI <= max_pos ? 16 : 0;
      cp_async16(kd + i * RPI * LD, Kh + src + i * RPI * D, bytes);
      cp_async16(vd + i * RPI * LD, Vh + src + i * RPI * D, bytes);
    }
    if (lane < 16) tokpos[stage * kTT + 16 * w + lane] = st < 0 ? INT_MAX : st + lane;
  };

#pragma unroll
  for (int p = 0; p < kStages - 1; ++p) {
    if (t_begin + p < t_end) load_span(p, t_begin + p);
    cp_async_commit();
  }

  // Q rows -> F16 (hi) and its rounding error (lo); rows past R are zero and fully masked.
  for (int idx = tid; idx < 8 * (D / 2); idx += NT) {
    const int r = idx / (D / 2), c = (idx % (D / 2)) * 2;
    float2 v = make_float2(0.0f, 0.0f);
    if (r < R) {
      const int i = r / G, g = r % G;
      v = *reinterpret_cast<const float2*>(a.q + i * a.q_stride + (int64_t)(h * G + g) * D + c);
    }
    const __half2 hi = __floats2half2_rn(v.x, v.y);
    *reinterpret_cast<__half2*>(Qs + r * LD + c) = hi;
    *reinterpret_cast<__half2*>(Qlo + r * LD + c) =
        q_split ? __floats2half2_rn(v.x - __low2float(hi), v.y - __high2float(hi)) : __floats2half2_rn(0.0f, 0.0f);
  }
  __syncthreads();

  // Q^T as the B operand (k = dims, n = rows): b0/b1 of the hi and lo parts, for every k-step.
  uint32_t qh[D / 16][2], ql[D / 16][2];
  {
    const int j = lane >> 3;
    const __half* qb = (j >> 1 ? Qlo : Qs) + (lane & 7) * LD + (j & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qh[kk][0], qh[kk][1], ql[kk][0], ql[kk][1], qb + 16 * kk);
  }

  // This thread's rows (the accumulators' N index): 2*t4 (A) and 2*t4 + 1 (B).
  const int rA = 2 * t4, rB = rA + 1;
  const int limA = rA < R ? pos0 + rA / G : -1;
  const int limB = rB < R ? pos0 + rB / G : -1;
  const float sl2 = a.scale * 1.4426950408889634f;

  // O^T accumulators: o[dp] = dims 16 dp + g4 (0, 1) and + 8 (2, 3); rows A (0, 2) and B (1, 3).
  float o[D / 16][4];
#pragma unroll
  for (int i = 0; i < D / 16; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;

  for (int t = t_begin; t < t_end; ++t) {
    const int it = t - t_begin, stage = it % kStages;
    if (t + kStages - 1 < t_end) load_span((it + kStages - 1) % kStages, t + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();  // this warp's copies (every lane's) have landed

    const __half* ks = Ks + (stage * kTT + 16 * w) * LD;
    const __half* vs = Vs + (stage * kTT + 16 * w) * LD;
    const int* tp = tokpos + stage * kTT + 16 * w;

    // S^T of this warp's 16 tokens: hi and lo query parts in separate accumulators (two
    // independent mma chains). Element e: token g4 + 8 (e >> 1), row A (e even) or B (e odd).
    // With ILP the odd k-steps go to a second pair of accumulators (a chain half as long).
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sl[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float s2[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sl2x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4];
      ldmatrix_x4(ka[0], ka[1], ka[2], ka[3], ks + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + 16 * kk + (lane >> 4) * 8);
      float* sa = ILP && (kk & 1) ? s2 : s;
      float* sb = ILP && (kk & 1) ? sl2x : sl;
      mma_16816(sa, ka, qh[kk][0], qh[kk][1]);
      if (q_split) mma_16816(sb, ka, ql[kk][0], ql[kk][1]);
    }
    if constexpr (ILP) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[e] += s2[e];
        sl[e] += sl2x[e];
      }
    }
    // Scale (log2 domain), mask, online softmax.
    float tmA = -INFINITY, tmB = -INFINITY;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int pos = tp[g4 + 8 * (e >> 1)];
      const float x = q_split ? s[e] + sl[e] : s[e];
      const float v = pos <= ((e & 1) ? limB : limA) ? x * sl2 : -INFINITY;
      s[e] = v;
      if (e & 1) tmB = fmaxf(tmB, v);
      else tmA = fmaxf(tmA, v);
    }
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, off));
      tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, off));
    }
    const float nmA = fmaxf(mA, tmA), nmB = fmaxf(mB, tmB);
    const float baseA = nmA == -INFINITY ? 0.0f : nmA, baseB = nmB == -INFINITY ? 0.0f : nmB;
    const float alA = exp2f(mA - baseA), alB = exp2f(mB - baseB);  // 0 while m was -inf
    mA = nmA;
    mB = nmB;
    s[0] = exp2f(s[0] - baseA);
    s[1] = exp2f(s[1] - baseB);
    s[2] = exp2f(s[2] - baseA);
    s[3] = exp2f(s[3] - baseB);
    lA = lA * alA + (s[0] + s[2]);
    lB = lB * alB + (s[1] + s[3]);

    // O^T += V^T P^T over the 16 tokens (one k-step). The B operand wants P[row g4][tokens 2 t4,
    // 2 t4 + 1]; the accumulators hold P[rows 2 t4, 2 t4 + 1][token g4]: the 8x8 transpose of it.
    // Two-term F16 probabilities (hi + lo) when precise. Each k-step's P.V goes into zeroed
    // accumulators, added to o (rescaled) in F32 after: the tensor cores' F32 accumulation
    // truncates, and a split of thousands of tiles would carry that bias through every step (rel.
    // error ~1e-5 after 20K tokens); this way a product sees one step.
    const __half2 h01 = __floats2half2_rn(s[0], s[1]);
    const __half2 h23 = __floats2half2_rn(s[2], s[3]);
    const uint32_t b0 = transpose8x8(*reinterpret_cast<const uint32_t*>(&h01));
    const uint32_t b1 = transpose8x8(*reinterpret_cast<const uint32_t*>(&h23));
    uint32_t c0 = 0, c1 = 0;
    if (a.precise) {
      c0 = transpose8x8(pack_half2(s[0] - __low2float(h01), s[1] - __high2float(h01)));
      c1 = transpose8x8(pack_half2(s[2] - __low2float(h23), s[3] - __high2float(h23)));
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      // r0: tokens 0-7 x dims 0-7, r1: tokens 8-15 x dims 0-7, r2: tokens 0-7 x dims 8-15,
      // r3: tokens 8-15 x dims 8-15, each transposed: A = V^T wants (dims, tokens) order r0 r2 r1 r3.
      uint32_t r0, r1, r2, r3;
      ldmatrix_x4_trans(r0, r1, r2, r3, vs + (((lane >> 3) & 1) * 8 + (lane & 7)) * LD + 16 * dp + (lane >> 4) * 8);
      const uint32_t va[4] = {r0, r2, r1, r3};
      float ot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      mma_16816(ot, va, b0, b1);
      if (a.precise) mma_16816(ot, va, c0, c1);
      o[dp][0] = fmaf(o[dp][0], alA, ot[0]);
      o[dp][1] = fmaf(o[dp][1], alB, ot[1]);
      o[dp][2] = fmaf(o[dp][2], alA, ot[2]);
      o[dp][3] = fmaf(o[dp][3], alB, ot[3]);
    }
    __syncwarp();  // this warp's half of the stage is refilled by its next iteration's copies
  }
  cp_async_wait<0>();

#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    lA += __shfl_xor_sync(0xffffffffu, lA, off);
    lB += __shfl_xor_sync(0xffffffffu, lB, off);
  }

  // Warps 1..W-1's (m, l, O) through shared memory (the K stages, no longer read), merged into
  // warp 0's one after the other (for W = 2 the same operations as before the shape switch).
  constexpr int XS = D / 4 + 4;  // floats per lane
  __syncthreads();  // every warp is out of the loop: nobody reads the stages any more
  if (w > 0) {
    float* xs = reinterpret_cast<float*>(Ks) + ((w - 1) * 32 + lane) * XS;
#pragma unroll
    for (int i = 0; i < D / 16; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) xs[4 * i + e] = o[i][e];
    xs[D / 4] = mA;
    xs[D / 4 + 1] = mB;
    xs[D / 4 + 2] = lA;
    xs[D / 4 + 3] = lB;
  }
  __syncthreads();
  if (w > 0) return;  // no barrier follows
  for (int src = 1; src < W; ++src) {
    const float* xs = reinterpret_cast<const float*>(Ks) + ((src - 1) * 32 + lane) * XS;
    const float m1A = xs[D / 4], m1B = xs[D / 4 + 1], l1A = xs[D / 4 + 2], l1B = xs[D / 4 + 3];
    const float MA = fmaxf(mA, m1A), MB = fmaxf(mB, m1B);
    const float a0A = mA == -INFINITY ? 0.0f : exp2f(mA - MA), a1A = m1A == -INFINITY ? 0.0f : exp2f(m1A - MA);
    const float a0B = mB == -INFINITY ? 0.0f : exp2f(mB - MB), a1B = m1B == -INFINITY ? 0.0f : exp2f(m1B - MB);
    lA = lA * a0A + l1A * a1A;
    lB = lB * a0B + l1B * a1B;
    mA = MA;
    mB = MB;
#pragma unroll
    for (int i = 0; i < D / 16; ++i) {
      o[i][0] = o[i][0] * a0A + xs[4 * i + 0] * a1A;
      o[i][1] = o[i][1] * a0B + xs[4 * i + 1] * a1B;
      o[i][2] = o[i][2] * a0A + xs[4 * i + 2] * a1A;
      o[i][3] = o[i][3] * a0B + xs[4 * i + 3] * a1B;
    }
  }
  __syncwarp();  // xs is read: the in-kernel combine may reuse the K stages

  store_decode_rows<D>(a, o, mA, mB, lA, lB, R, h, split, n_splits, g4, t4);
  if (n_splits > 1 && a.combine_mergers > 0) merge_splits_in_kernel<D>(a, h, R, reinterpret_cast<float*>(Ks));
}

template <int D, int W, int ST, bool ILP>
void configure_decode() {  // the shared-memory opt-in, once per device
  static bool configured[64] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  if (configured[dev & 63]) return;
  PYRESA_CUDA_CHECK(cudaFuncSetAttribute(decode_attention_kernel<D, W, ST, ILP>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)DecodeSmem<D, W, ST>::bytes));
  configured[dev & 63] = true;
}

template <int D, int W, int ST, bool ILP>
int ctas_per_sm() {  // resident CTAs per SM (asked once per device, outside any graph capture)
  static int per_sm[64] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  if (!per_sm[dev & 63]) {
    configure_decode<D, W, ST, ILP>();
    int n = 0;
    PYRESA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_attention_kernel<D, W, ST, ILP>, 32 * W,
                                                                    DecodeSmem<D, W, ST>::bytes));
    per_sm[dev & 63] = n > 0 ? n : 1;
  }
  return per_sm[dev & 63];
}

template <int D, int W, int ST, bool ILP>
void launch_decode(const AttentionArgs& a, cudaStream_t stream) {
  configure_decode<D, W, ST, ILP>();
  launch(decode_attention_kernel<D, W, ST, ILP>, dim3(a.n_splits, a.n_kv_head), 32 * W, DecodeSmem<D, W, ST>::bytes,
         stream, a);
  PYRESA_CUDA_LAUNCH_CHECK();
}

// The shapes decode_attention_shape() may name (warps x 100 + stages x 10 + ILP), each a call of
// f.template run<W, ST, ILP>(); unknown codes run the default.
template <class F>
auto with_decode_shape(const F& f) {
  switch (decode_attention_shape()) {
    case 241: return f.template run<2, 4, true>();
    case 221: return f.template run<2, 2, true>();
    case 421: return f.template run<4, 2, true>();
    case 420: return f.template run<4, 2, false>();
    case 431: return f.template run<4, 3, true>();
    case 240: return f.template run<2, 4, false>();
    default: return f.template run<4, 3, true>();
  }
}

struct CtasPerSm {
  template <int W, int ST, bool ILP>
  int run() const { return ctas_per_sm<128, W, ST, ILP>(); }  // at D = 128 (D = 64 fits at least as many)
};
struct TileTokens {
  template <int W, int ST, bool ILP>
  int run() const { return 16 * W; }
};
struct LaunchDecode {
  const AttentionArgs& a;
  cudaStream_t stream;
  template <int W, int ST, bool ILP>
  int run() const {
    if (a.D == 128) launch_decode<128, W, ST, ILP>(a, stream);
    else launch_decode<64, W, ST, ILP>(a, stream);
    return 0;
  }
};

}  // namespace

int& decode_attention_shape() {
  static int shape = 431;
  return shape;
}

bool& decode_attention_enabled() {
  static bool on = true;
  return on;
}

int& decode_combine_mode() {
  static int mode = 0;
  return mode;
}

int decode_attention_resident_ctas() {
  static int n_sm[64] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  if (!n_sm[dev & 63]) PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm[dev & 63], cudaDevAttrMultiProcessorCount, dev));
  return decode_attention_ctas_per_sm() * n_sm[dev & 63];
}

bool decode_attention_applies(int n_tok, int n_head, int n_kv_head, int D) {
  return decode_attention_enabled() && n_kv_head > 0 && n_tok * (n_head / n_kv_head) <= 8 && (D == 64 || D == 128);
}

int decode_attention_ctas_per_sm() { return with_decode_shape(CtasPerSm{}); }

int decode_attention_tile_tokens() { return with_decode_shape(TileTokens{}); }

void attention_decode_partials(const AttentionArgs& a, cudaStream_t stream) { with_decode_shape(LaunchDecode{a, stream}); }

}  // namespace pyresa::cuda
