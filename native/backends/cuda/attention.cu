#include <algorithm>
#include <climits>
#include <stdexcept>

#include "backends/cuda/attention.cuh"
#include "backends/cuda/attention_decode.cuh"
#include "backends/cuda/attention_epilogue.cuh"
#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"

namespace pyresa::cuda {

namespace {

constexpr int TT = 32;  // tokens per tile (two 16-token spans)

template <int D, int NW>
struct AttnSmem {
  static constexpr int LD = D + 8;  // padded row: ldmatrix rows land in distinct banks
  static constexpr size_t q_elems = (size_t)16 * NW * LD;
  static constexpr size_t kv_elems = (size_t)2 * TT * LD;  // per operand, two stages
  // Q as F16 (hi), then its rounding error as F16 (lo, when split_query: the CPU's decode attention
  // keeps the query in F32; its prefill attention rounds it to F16, as llama.cpp does).
  static constexpr size_t bytes = (2 * q_elems + 2 * kv_elems) * sizeof(__half) + 2 * TT * sizeof(int);
};

__device__ __forceinline__ int span_start(const AttentionArgs& a, int h, int e, int n_spans, int spb) {
  if (e >= n_spans) return -1;
  if (!a.blocks) return 16 * e;
  return a.blocks[h * a.blocks_stride + e / spb] * a.block_size + (e % spb) * 16;
}

template <int D, int NW>
__global__ void __launch_bounds__(32 * NW) attention_kernel(AttentionArgs a) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  using S = AttnSmem<D, NW>;
  constexpr int LD = S::LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* Qs = reinterpret_cast<__half*>(smem_raw);
  __half* Qlo = Qs + S::q_elems;
  __half* Ks = Qlo + S::q_elems;
  __half* Vs = Ks + S::kv_elems;
  int* tokpos = reinterpret_cast<int*>(Vs + S::kv_elems);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.z, split = blockIdx.y, n_splits = gridDim.y;
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  const int row0 = blockIdx.x * 16 * NW;
  const int pos0 = *a.pos_dev + a.pos_offset;
  const bool q_split = a.split_query;

  // Q rows -> F16 in shared memory (rows past R are zero and fully masked).
  for (int idx = tid; idx < 16 * NW * (D / 2); idx += 32 * NW) {
    const int r = idx / (D / 2), c = (idx % (D / 2)) * 2;
    const int gr = row0 + r;
    float2 v = make_float2(0.0f, 0.0f);
    if (gr < R) {
      const int i = gr / G, g = gr % G;
      v = *reinterpret_cast<const float2*>(a.q + i * a.q_stride + (int64_t)(h * G + g) * D + c);
    }
    const __half2 hi = __floats2half2_rn(v.x, v.y);
    *reinterpret_cast<__half2*>(Qs + r * LD + c) = hi;
    if (q_split)
      *reinterpret_cast<__half2*>(Qlo + r * LD + c) =
          __floats2half2_rn(v.x - __low2float(hi), v.y - __high2float(hi));
  }

  const int last_row = min(R - 1, row0 + 16 * NW - 1);
  const int max_pos = pos0 + last_row / G;
  const int spb = a.block_size / 16;
  const int n_spans = a.blocks ? *a.n_sel_dev * spb : max_pos / 16 + 1;
  const int n_tiles = (n_spans + 1) / 2;
  const int t_begin = (int)((int64_t)n_tiles * split / n_splits);
  const int t_end = (int)((int64_t)n_tiles * (split + 1) / n_splits);

  const __half* Kh = a.K + h * a.head_stride;
  const __half* Vh = a.V + h * a.head_stride;
  auto load_tile = [&](int stage, int t) {
    const int st0 = span_start(a, h, 2 * t, n_spans, spb);
    const int st1 = span_start(a, h, 2 * t + 1, n_spans, spb);
    for (int c = tid; c < TT * (D / 8); c += 32 * NW) {
      const int tt = c / (D / 8), col = (c % (D / 8)) * 8;
      const int st = tt < 16 ? st0 : st1;
      const int tok = st < 0 ? 0 : st + (tt & 15);
      // Keys past max_pos are zero-filled, not read: masked, but stale NaN / inf in V would still
      // make 0 x V NaN in P.V (a cache truncated after a sequence that overflowed).
      const int bytes = st >= 0 && tok <= max_pos ? 16 : 0;
      cp_async16(Ks + (stage * TT + tt) * LD + col, Kh + (int64_t)tok * D + col, bytes);
      cp_async16(Vs + (stage * TT + tt) * LD + col, Vh + (int64_t)tok * D + col, bytes);
    }
    if (tid < TT) {
      const int st = tid < 16 ? st0 : st1;
      tokpos[stage * TT + tid] = st < 0 ? INT_MAX : st + (tid & 15);
    }
  };

  const int g4 = lane >> 2, t4 = lane & 3;
  const int rA = row0 + 16 * warp + g4, rB = rA + 8;
  const int limA = rA < R ? pos0 + rA / G : -1;
  const int limB = rB < R ? pos0 + rB / G : -1;
  const float sl2 = a.scale * 1.4426950408889634f;

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;

  if (t_begin < t_end) load_tile(0, t_begin);
  cp_async_commit();
  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    if (t + 1 < t_end) load_tile(stage ^ 1, t + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const __half* ks = Ks + stage * TT * LD;
    const __half* vs = Vs + stage * TT * LD;
    const int* tp = tokpos + stage * TT;
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4];
      ldmatrix_x4(qa[0], qa[1], qa[2], qa[3],
                  Qs + (16 * warp + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + 16 * kk + (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(b0, b1, b2, b3, ks + (16 * np + (lane & 7) + (lane >> 4) * 8) * LD + 16 * kk + ((lane >> 3) & 1) * 8);
        mma_16816(s[2 * np], qa, b0, b1);
        mma_16816(s[2 * np + 1], qa, b2, b3);
        if (q_split) {
          uint32_t ql[4];
          ldmatrix_x4(ql[0], ql[1], ql[2], ql[3],
                      Qlo + (16 * warp + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + 16 * kk + (lane >> 4) * 8);
          mma_16816(s[2 * np], ql, b0, b1);
          mma_16816(s[2 * np + 1], ql, b2, b3);
        }
      }
    }
    // Scale (log2 domain), mask, online softmax for the thread's two rows.
    float tmA = -INFINITY, tmB = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = tp[8 * nt + 2 * t4 + (e & 1)];
        const int lim = e < 2 ? limA : limB;
        const float v = pos <= lim ? s[nt][e] * sl2 : -INFINITY;
        s[nt][e] = v;
        if (e < 2) tmA = fmaxf(tmA, v);
        else tmB = fmaxf(tmB, v);
      }
    tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 1));
    tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 2));
    tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 1));
    tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 2));
    const float nmA = fmaxf(mA, tmA), nmB = fmaxf(mB, tmB);
    const float baseA = nmA == -INFINITY ? 0.0f : nmA, baseB = nmB == -INFINITY ? 0.0f : nmB;
    const float alA = exp2f(mA - baseA), alB = exp2f(mB - baseB);  // 0 while m was -inf
    mA = nmA;
    mB = nmB;
    lA *= alA;
    lB *= alB;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= alA;
      o[i][1] *= alA;
      o[i][2] *= alB;
      o[i][3] *= alB;
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - baseA);
      s[nt][1] = exp2f(s[nt][1] - baseA);
      s[nt][2] = exp2f(s[nt][2] - baseB);
      s[nt][3] = exp2f(s[nt][3] - baseB);
      lA += s[nt][0] + s[nt][1];
      lB += s[nt][2] + s[nt][3];
    }
    // O += P V: P from the score accumulators (two n-tiles of 8 = one k-step of 16).
#pragma unroll
    // precise: P = P_hi + P_lo, both F16, two products: probabilities to ~2^-22 instead of 2^-11.
    for (int k2 = 0; k2 < 2; ++k2) {
      uint32_t pa[4], pl[4];
      const float* p4[4] = {&s[2 * k2][0], &s[2 * k2][2], &s[2 * k2 + 1][0], &s[2 * k2 + 1][2]};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const __half2 hi = __floats2half2_rn(p4[e][0], p4[e][1]);
        pa[e] = *reinterpret_cast<const uint32_t*>(&hi);
        pl[e] = pack_half2(p4[e][0] - __low2float(hi), p4[e][1] - __high2float(hi));
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(b0, b1, b2, b3,
                          vs + (16 * k2 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + 16 * dp + (lane >> 4) * 8);
        mma_16816(o[2 * dp], pa, b0, b1);
        mma_16816(o[2 * dp + 1], pa, b2, b3);
        if (a.precise) {
          mma_16816(o[2 * dp], pl, b0, b1);
          mma_16816(o[2 * dp + 1], pl, b2, b3);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  store_mma_row<D>(a, rA, h, split, n_splits, mA, lA, t4, [&](int nd) { return make_float2(o[nd][0], o[nd][1]); });
  store_mma_row<D>(a, rB, h, split, n_splits, mB, lB, t4, [&](int nd) { return make_float2(o[nd][2], o[nd][3]); });
}

// out row r of KV head h = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M). The splits' (m, l) are
// read in parallel into shared memory first: a serial loop over hundreds of splits is a chain of
// dependent L2 round trips (seen: ~90 us per layer at 256 splits).
constexpr int kMaxCombineSplits = 1024;

template <int D>
__global__ void __launch_bounds__(D) combine_kernel(AttentionArgs a, int R, int G) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  __shared__ float cs[kMaxCombineSplits];
  __shared__ float red[D / 32];
  const int r = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int S = a.n_splits;
  const float* base = a.work + ((int64_t)h * S * R + r) * (D + 2);
  const int64_t split_stride = (int64_t)R * (D + 2);
  float mloc = -INFINITY;
  for (int s = tid; s < S; s += D) {
    const float* w = base + s * split_stride;
    const float m = w[D + 1] > 0.0f ? w[D] : -INFINITY;
    cs[s] = m;
    mloc = fmaxf(mloc, m);
  }
  mloc = warp_max(mloc);
  if (lane == 0) red[warp] = mloc;
  __syncthreads();
  float M = red[0];
  for (int i = 1; i < D / 32; ++i) M = fmaxf(M, red[i]);
  __syncthreads();
  float lloc = 0.0f;
  for (int s = tid; s < S; s += D) {
    const float c = (cs[s] == -INFINITY || M == -INFINITY) ? 0.0f : exp2f(cs[s] - M);
    cs[s] = c;
    lloc += c * base[s * split_stride + D + 1];
  }
  lloc = warp_sum(lloc);
  if (lane == 0) red[warp] = lloc;
  __syncthreads();
  float L = 0.0f;
  for (int i = 0; i < D / 32; ++i) L += red[i];
  float acc = 0.0f;
#pragma unroll 8
  for (int s = 0; s < S; ++s) {
    const float c = cs[s];
    if (c != 0.0f) acc += base[s * split_stride + tid] * c;
  }
  const int i = r / G, hq = h * G + r % G;
  a.out[i * a.out_stride + (int64_t)hq * D + tid] = L > 0.0f ? acc / L : 0.0f;
}

// The same combine with every (split, dimension) pair read in parallel: CS groups of D threads,
// group g summing splits g, g + CS, ..., then the CS partial sums added in shared memory. The
// serial loop above waits ~S/8 dependent L2 round trips per thread (9 us per layer at 128
// splits, for ~0.4 MB).
template <int D, int CS>
__global__ void __launch_bounds__(D * CS) combine_parallel_kernel(AttentionArgs a, int R, int G) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  constexpr int NT = D * CS, NWARP = NT / 32;
  __shared__ float cs[kMaxCombineSplits];
  __shared__ float red[NWARP];
  __shared__ float part[CS][D];
  const int r = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int S = a.n_splits;
  const float* base = a.work + ((int64_t)h * S * R + r) * (D + 2);
  const int64_t split_stride = (int64_t)R * (D + 2);
  float mloc = -INFINITY;
  for (int s = tid; s < S; s += NT) {
    const float* w = base + s * split_stride;
    const float m = w[D + 1] > 0.0f ? w[D] : -INFINITY;
    cs[s] = m;
    mloc = fmaxf(mloc, m);
  }
  mloc = warp_max(mloc);
  if (lane == 0) red[warp] = mloc;
  __syncthreads();
  float M = red[0];
  for (int i = 1; i < NWARP; ++i) M = fmaxf(M, red[i]);
  __syncthreads();
  float lloc = 0.0f;
  for (int s = tid; s < S; s += NT) {
    const float c = (cs[s] == -INFINITY || M == -INFINITY) ? 0.0f : exp2f(cs[s] - M);
    cs[s] = c;
    lloc += c * base[s * split_stride + D + 1];
  }
  lloc = warp_sum(lloc);
  if (lane == 0) red[warp] = lloc;
  __syncthreads();
  float L = 0.0f;
  for (int i = 0; i < NWARP; ++i) L += red[i];
  const int d = tid % D, g = tid / D;
  float acc = 0.0f;
#pragma unroll 8
  for (int s = g; s < S; s += CS) acc += base[s * split_stride + d] * cs[s];  // empty splits: 0 x 0
  part[g][d] = acc;
  __syncthreads();
  if (g == 0) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < CS; ++i) sum += part[i][d];
    const int i = r / G, hq = h * G + r % G;
    a.out[i * a.out_stride + (int64_t)hq * D + d] = L > 0.0f ? sum / L : 0.0f;
  }
}

// parallel: after the decode kernel (decode steps); the batched paths keep the serial combine.
template <int D>
void launch_combine(const AttentionArgs& a, bool parallel, cudaStream_t stream) {
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  if (parallel) launch(combine_parallel_kernel<D, 1024 / D>, dim3(R, a.n_kv_head), 1024, 0, stream, a, R, G);
  else launch(combine_kernel<D>, dim3(R, a.n_kv_head), D, 0, stream, a, R, G);
  PYRESA_CUDA_LAUNCH_CHECK();
}

template <int D, int NW>
void launch_attention(const AttentionArgs& a, cudaStream_t stream) {
  const size_t smem = AttnSmem<D, NW>::bytes;
  static bool configured[64] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  if (!configured[dev & 63]) {
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<D, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured[dev & 63] = true;
  }
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  dim3 grid(ceil_div(R, 16 * NW), a.n_splits, a.n_kv_head);
  launch(attention_kernel<D, NW>, grid, 32 * NW, smem, stream, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  if (a.n_splits > 1) launch_combine<D>(a, false, stream);
}

template <int D>
void launch_combine(const AttentionArgs& a, cudaStream_t stream) {
  const int G = a.n_head / a.n_kv_head, R = a.n_tok * G;
  launch(combine_kernel<D>, dim3(R, a.n_kv_head), D, 0, stream, a, R, G);
  PYRESA_CUDA_LAUNCH_CHECK();
}

template <int D>
void launch_d(const AttentionArgs& a, cudaStream_t stream) {
  const int R = a.n_tok * (a.n_head / a.n_kv_head);
  if (R <= 16) launch_attention<D, 1>(a, stream);
  else if (R <= 64) launch_attention<D, 4>(a, stream);
  else if (R <= 128) launch_attention<D, 8>(a, stream);
  else launch_attention<D, 16>(a, stream);
}

}  // namespace

int decode_attention_splits(int n_tok, int n_head, int n_kv_head, int D, int n_tiles, int n_sm) {
  if (!decode_attention_applies(n_tok, n_head, n_kv_head, D)) return 0;
  // One wave of resident CTAs, at least 4 tiles each (n_tiles counts 32-token tiles; the kernel's
  // own tiles may be longer).
  int s = std::max(1, decode_attention_ctas_per_sm() * n_sm / n_kv_head);
  s = std::min(s, std::max(1, n_tiles * 32 / decode_attention_tile_tokens() / 4));
  return std::min(s, kMaxCombineSplits);
}

size_t attention_work_floats(int n_tok, int n_head, int n_kv_head, int D, int n_splits) {
  if (n_splits <= 1) return 0;
  return (size_t)n_kv_head * n_splits * n_tok * (n_head / n_kv_head) * (D + 2);
}

void attention_combine(const AttentionArgs& a, cudaStream_t stream) {
  if (a.n_splits > kMaxCombineSplits) throw std::invalid_argument("attention: too many splits");
  switch (a.D) {
    case 64: launch_combine<64>(a, stream); break;
    case 128: launch_combine<128>(a, stream); break;
    default: throw UnsupportedError("CUDA backend: head_dim must be 64 or 128, got " + std::to_string(a.D));
  }
}

void attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.n_tok <= 0) return;
  if (a.n_kv_head <= 0 || a.n_head % a.n_kv_head) throw std::invalid_argument("attention: bad head counts");
  if (a.block_size % 16) throw UnsupportedError("CUDA backend: block_size must be a multiple of 16");
  if (a.n_splits > 1 && !a.work) throw std::invalid_argument("attention: n_splits > 1 needs a workspace");
  if (a.n_splits > kMaxCombineSplits) throw std::invalid_argument("attention: too many splits");
  if (decode_attention_applies(a.n_tok, a.n_head, a.n_kv_head, a.D)) {
    AttentionArgs d = a;
    d.combine_mergers = 0;
    if (a.n_splits > 1 && a.sync && decode_combine_mode() == 1) {
      // One merging CTA per chunk (8 per row) at most, and together under half of the resident
      // CTAs: those CTAs wait for the last of their head, which must find room to run.
      const int R = a.n_tok * (a.n_head / a.n_kv_head);
      const int room = decode_attention_resident_ctas() / 2 / a.n_kv_head;
      d.combine_mergers = std::min({a.n_splits, 8 * R, room});
      if (d.combine_mergers < 1) d.combine_mergers = 0;
    }
    attention_decode_partials(d, stream);
    if (a.n_splits > 1 && d.combine_mergers == 0) {
      if (a.D == 128) launch_combine<128>(a, true, stream);
      else launch_combine<64>(a, true, stream);
    }
    return;
  }
  switch (a.D) {
    case 64: launch_d<64>(a, stream); break;
    case 128: launch_d<128>(a, stream); break;
    default: throw UnsupportedError("CUDA backend: head_dim must be 64 or 128, got " + std::to_string(a.D));
  }
}

}  // namespace pyresa::cuda
