// Included by quant.cu inside its anonymous namespace (uses its layouts and helpers, and
// stream_k.cuh, which quant.cu includes).
//
// ---- pipelined dequantize-and-multiply for a few tokens (Q4_K, Q6_K) ---------------------------
// The products of a rectification (9..64 tokens): y[m][n] (+)= sum_k A[m][k] W[n][k]. The weights
// are read once for all tokens, so the product is bound by the quantized bytes (7B: 4.4 GB per
// rectification, 1.5 ms at 3 TB/s). dqmm_kernel (one stage: load, dequantize, multiply, in turn)
// reached ~0.4 TB/s. This kernel keeps the memory busy:
// - a ring of S stages (default 2) in shared memory holds the raw quantized blocks of a 128-row x 256-deep
//   slice of W plus the tokens' F16 activations for that slice, filled by cp.async S-1 slices
//   ahead while the warps work on the current one (the weights of the first slices are requested
//   before the PDL wait: they do not depend on the previous kernel);
// - no F16 weight tile: each thread dequantizes its 2 rows x 64 elements of a slice straight from
//   the raw bytes into mma A fragments (W is the 16-row A operand, the tokens the 8-column B
//   operand, so 33 tokens cost 5 n-tiles, not 3 padded 16-row tiles). The k order inside a slice
//   is permuted so that each fragment's 4 elements are 4 consecutive weights of one 32-bit quant
//   word; the tokens' fragments are read with the same permutation (8 consecutive halves of one
//   token = two k-steps, one 16-byte load). A sum over k does not depend on its order: only the
//   F32 accumulation order differs from dqmm_kernel;
// - int-to-float by the exponent trick (0x4B000000 | q is 2^23 + q) instead of I2F, a quarter-rate
//   instruction; values as the CPU computes them (two roundings in F32, then rounded to F16);
// - work split "stream-K": the (row tile, slice) units are split evenly over one persistent wave
//   of CTAs; a tile done by one CTA is written directly, the others' segments go to a workspace
//   and a second kernel adds them in CTA order (deterministic).

constexpr int kDpQ4Row = 144;                                   // Q4_K: one block per row and slice
constexpr int kDpQ6Ql = 160, kDpQ6Qh = 64, kDpQ6Sc = 16, kDpQ6D = 4;  // Q6_K planes (ql padded: banks)
constexpr int kDpTokRow = 512;                                   // 256 halves of one token

// A CTA of WARPS warps works on 16 * WARPS rows (16 per warp).
template <GgmlType W, int WARPS>
__host__ __device__ constexpr int dp_w_stage_bytes() {
  return W == GgmlType::Q4_K ? 16 * WARPS * kDpQ4Row : 16 * WARPS * (kDpQ6Ql + kDpQ6Qh + kDpQ6Sc + kDpQ6D);
}
__host__ __device__ inline size_t dp_stage_bytes(int w_bytes, int nt) { return (size_t)w_bytes + (size_t)nt * 8 * kDpTokRow; }

// Where 16-byte chunk c (8 halves) of token row m lies in its stage row: the low 3 bits are
// XOR-swizzled so that the 8 lanes of a 16-byte load phase (rows g = 0, 1; t = 0..3) hit 8
// different bank groups. Q4_K lanes differ in chunk bits 3-4 (t), Q6_K lanes in bits 1 and 4.
template <GgmlType W>
__device__ __forceinline__ int dp_tok_chunk(int c, int m) {
  const int x = W == GgmlType::Q4_K ? ((c >> 3) & 3) : ((c >> 4) & 1);
  return c ^ (x | ((m & 1) << 2));
}

// Plain loads (not asm volatile): the compiler may hoist them ahead of the mma that need them.
__device__ __forceinline__ uint4 lds128(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ uint2 lds64(const void* p) { return *reinterpret_cast<const uint2*>(p); }
__device__ __forceinline__ uint32_t lds32(const void* p) { return *reinterpret_cast<const uint32_t*>(p); }
// mma.sync without volatile: no side effects, so it may be scheduled among the dequantization.
__device__ __forceinline__ void dp_mma(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_wait_stages(int s) {  // wait until at most s - 2 groups are pending
  if (s <= 2) cp_async_wait<0>();
  else if (s == 3) cp_async_wait<1>();
  else cp_async_wait<2>();
}

// Byte e of x (a value 0..255) as the float 2^23 + x: one PRMT instead of an I2F.
__device__ __forceinline__ float dp_byte_magic(uint32_t x, int e) {
  return __uint_as_float(__byte_perm(x, 0x4B000000u, 0x7440u | (uint32_t)e));
}

struct DpArgs {
  DeviceWeight w;
  const __half* A;
  int64_t lda;
  int M;
  float* y;
  int64_t ldy;
  const float* bias;
  bool accumulate;
  int kc;          // slices (of 256) per row
  int units;       // row tiles * kc
  int stages;      // ring depth, 2..4
  int prefetch;    // > 0: bulk-prefetch into L2 the rows of the slice this many units ahead
  int trigger;     // 1: early PDL trigger when a CTA starts its last unit
  int bn;          // rows per tile (16 per warp)
  float* partial;  // [2 * gridDim.x][M][bn]: segments of tiles shared by CTAs
};


// Loads of unit u (row tile u / kc, slice u % kc) into stage buffer st: weights, then tokens.
template <GgmlType W, int WARPS>
__device__ __forceinline__ void dp_load_w(const DpArgs& p, unsigned char* st, int u) {
  const int tile = u / p.kc, kc = u % p.kc;
  const int64_t n0 = (int64_t)tile * (16 * WARPS);
  const int64_t last = p.w.rows - 1;
  if constexpr (W == GgmlType::Q4_K) {
    for (int i = threadIdx.x; i < (16 * WARPS) * 9; i += (32 * WARPS)) {
      const int r = i / 9, c = i % 9;
      const int64_t row = n0 + r < last ? n0 + r : last;  // past the end: a real row, result discarded
      cp_async16(st + r * kDpQ4Row + 16 * c, p.w.data + row * p.w.row_bytes + (int64_t)kc * kDpQ4Row + 16 * c);
    }
  } else {
    const int64_t nb = p.kc;
    const Q6Planes pl = q6_planes(p.w.data, p.w.rows * nb);
    unsigned char* ql = st;
    unsigned char* qh = ql + (16 * WARPS) * kDpQ6Ql;
    unsigned char* sc = qh + (16 * WARPS) * kDpQ6Qh;
    unsigned char* dd = sc + (16 * WARPS) * kDpQ6Sc;
    for (int i = threadIdx.x; i < (16 * WARPS) * 14; i += (32 * WARPS)) {
      const int r = i / 14, c = i % 14;
      const int64_t row = n0 + r < last ? n0 + r : last;
      const int64_t blk = row * nb + kc;
      if (c < 8) cp_async16(ql + r * kDpQ6Ql + 16 * c, pl.ql + blk * kQ6Ql + 16 * c);
      else if (c < 12) cp_async16(qh + r * kDpQ6Qh + 16 * (c - 8), pl.qh + blk * kQ6Qh + 16 * (c - 8));
      else if (c == 12) cp_async16(sc + r * kDpQ6Sc, pl.sc + blk * kQ6Sc);
      else  // the aligned word holding d (half of it when the plane ends after d)
        cp_async4(dd + r * kDpQ6D, pl.d + (blk & ~int64_t(1)), (blk | 1) < p.w.rows * nb ? 4 : 2);
    }
  }
}

template <GgmlType W, int NT, int WARPS>
__device__ __forceinline__ void dp_load_tokens(const DpArgs& p, unsigned char* st, int u) {
  unsigned char* tok = st + dp_w_stage_bytes<W, WARPS>();
  const int64_t k0 = (int64_t)(u % p.kc) * 256;
  for (int i = threadIdx.x; i < NT * 8 * 32; i += (32 * WARPS)) {
    const int m = i >> 5, c = i & 31;
    const int mm = m < p.M ? m : p.M - 1;  // padding tokens: a real token, result discarded
    cp_async16(tok + m * kDpTokRow + 16 * dp_tok_chunk<W>(c, m), p.A + mm * p.lda + k0 + 8 * c);
  }
}

template <GgmlType W, int WARPS>
__device__ __forceinline__ void dp_prefetch_w(const DpArgs& p, int u) {
  const int r = threadIdx.x;
  if (r >= (16 * WARPS)) return;
  const int tile = u / p.kc, kc = u % p.kc;
  const int64_t row = (int64_t)tile * (16 * WARPS) + r;
  if (row >= p.w.rows) return;
  if constexpr (W == GgmlType::Q4_K) {
    prefetch_l2_bulk(p.w.data + row * p.w.row_bytes + (int64_t)kc * kDpQ4Row, kDpQ4Row);
  } else {
    const int64_t nb = p.kc;
    const Q6Planes pl = q6_planes(p.w.data, p.w.rows * nb);
    const int64_t blk = row * nb + kc;
    prefetch_l2_bulk(pl.ql + blk * kQ6Ql, kQ6Ql);
    prefetch_l2_bulk(pl.qh + blk * kQ6Qh, kQ6Qh);
  }
}

// One k-step pair's multiply: w_lo/w_hi = the 4 weights (as 2 half2 each) of rows g and g + 8 for
// two k-steps; tokens' fragments from one 16-byte load per n-tile.
template <int NT>
__device__ __forceinline__ void dp_mma_pair(float (&acc)[NT][4], const uint32_t (&a0)[4], const uint32_t (&a1)[4],
                                            const unsigned char* tok, int g, int chunk) {
#pragma unroll
  for (int ni = 0; ni < NT; ++ni) {
    const uint4 b = lds128(tok + (8 * ni + g) * kDpTokRow + 16 * chunk);
    dp_mma(acc[ni], a0, b.x, b.y);
    dp_mma(acc[ni], a1, b.z, b.w);
  }
}

// The 4 dequantized weights of byte lanes 0..3 of q (values 0..255 + 2^23 as floats), each
// fl(fl(d * (q - bias)) - m) as the CPU computes it, packed as two half2.
template <bool kSub>
__device__ __forceinline__ void dp_dequant4(uint32_t q, float bias, float d, float m, uint32_t& lo, uint32_t& hi) {
  float v[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float x = __fsub_rn(dp_byte_magic(q, e), bias);  // exact
    v[e] = kSub ? __fsub_rn(__fmul_rn(d, x), m) : __fmul_rn(d, x);
  }
  lo = pack_half2(v[0], v[1]);
  hi = pack_half2(v[2], v[3]);
}

template <GgmlType W, int NT, int WARPS>
__device__ __forceinline__ void dp_compute(const DpArgs& p, const unsigned char* st, int u, float (&acc)[NT][4]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const unsigned char* tok = st + dp_w_stage_bytes<W, WARPS>();
  const int r0 = 16 * warp + g, r1 = r0 + 8;
  if constexpr (W == GgmlType::Q4_K) {
    // Thread t: quant bytes 32t..32t+31 of its rows = sub-blocks 2t (low nibbles) and 2t+1 (high).
    float dl[2], ml[2], dh[2], mh[2];
    uint4 qa[2], qb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const unsigned char* row = st + (i ? r1 : r0) * kDpQ4Row;
      const uint4 hdr = lds128(row);
      qa[i] = lds128(row + 16 + 32 * t);
      qb[i] = lds128(row + 32 + 32 * t);
      int sc, m;
      const float d = h2f((uint16_t)(hdr.x & 0xffff)), dmin = h2f((uint16_t)(hdr.x >> 16));
      q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * t, sc, m);
      dl[i] = __fmul_rn(d, (float)sc);
      ml[i] = __fmul_rn(dmin, (float)m);
      q4k_scale_min(hdr.y, hdr.z, hdr.w, 2 * t + 1, sc, m);
      dh[i] = __fmul_rn(d, (float)sc);
      mh[i] = __fmul_rn(dmin, (float)m);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int qp = 0; qp < 4; ++qp) {
        // k-steps 8h + 2qp, 8h + 2qp + 1: quant words 2qp, 2qp + 1, nibble h; elements
        // 64t + 32h + 8qp .. + 7 of the slice = token chunk 8t + 4h + qp.
        uint32_t a0[4], a1[4];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const uint32_t w0 = qp == 0 ? qa[i].x : qp == 1 ? qa[i].z : qp == 2 ? qb[i].x : qb[i].z;
          const uint32_t w1 = qp == 0 ? qa[i].y : qp == 1 ? qa[i].w : qp == 2 ? qb[i].y : qb[i].w;
          const uint32_t n0 = h ? (w0 >> 4) & 0x0f0f0f0fu : w0 & 0x0f0f0f0fu;
          const uint32_t n1 = h ? (w1 >> 4) & 0x0f0f0f0fu : w1 & 0x0f0f0f0fu;
          const float d = h ? dh[i] : dl[i], m = h ? mh[i] : ml[i];
          // A fragment: a[0] row g k 2t.., a[1] row g+8, a[2] row g k 2t+8.., a[3] row g+8
          dp_dequant4<true>(n0, 8388608.0f, d, m, a0[i], a0[2 + i]);
          dp_dequant4<true>(n1, 8388608.0f, d, m, a1[i], a1[2 + i]);
        }
        // (token rows 8ni + g all have g's parity, which the swizzle takes)
        dp_mma_pair<NT>(acc, a0, a1, tok, g, dp_tok_chunk<W>(8 * t + 4 * h + qp, g));
      }
  } else {
    // Thread t: half hh = t / 2 of the superblock, positions l0 = 16 (t % 2) .. + 15 of each of
    // its 4 groups of 32 (k = 0..3): ql bytes 64hh + l0 (k 0, 2) and 64hh + 32 + l0 (k 1, 3),
    // qh bytes 32hh + l0 (2 bits per k), scales 8hh + 2k + t % 2.
    const int hh = t >> 1, l0 = 16 * (t & 1);
    const unsigned char* ql = st;
    const unsigned char* qh = ql + (16 * WARPS) * kDpQ6Ql;
    const unsigned char* sc = qh + (16 * WARPS) * kDpQ6Qh;
    const unsigned char* dd = sc + (16 * WARPS) * kDpQ6Sc;
    const int tile = u / p.kc, kc = u % p.kc;
    uint4 lo[2], hi[2], hb[2];
    float dg[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = i ? r1 : r0;
      lo[i] = lds128(ql + r * kDpQ6Ql + 64 * hh + l0);
      hi[i] = lds128(ql + r * kDpQ6Ql + 64 * hh + 32 + l0);
      hb[i] = lds128(qh + r * kDpQ6Qh + 32 * hh + l0);
      const uint2 s8 = lds64(sc + r * kDpQ6Sc + 8 * hh);
      const uint32_t dw = lds32(dd + r * kDpQ6D);
      int64_t row = (int64_t)tile * (16 * WARPS) + r;
      if (row > p.w.rows - 1) row = p.w.rows - 1;  // as loaded
      const float d = h2f((uint16_t)(((row * p.kc + kc) & 1) ? dw >> 16 : dw & 0xffff));
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint32_t word = k < 2 ? s8.x : s8.y;
        const int8_t s = (int8_t)((word >> (8 * (2 * (k & 1) + (t & 1)))) & 0xff);
        dg[i][k] = __fmul_rn(d, (float)s);
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int jp = 0; jp < 2; ++jp) {
        // k-steps 4k + 2jp, +1: words 2jp, 2jp + 1 of the k's ql half and of qh; elements
        // 128hh + 32k + l0 + 8jp .. + 7 = token chunk 16hh + 4k + 2(t % 2) + jp.
        uint32_t a0[4], a1[4];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const uint4& L = (k & 1) ? hi[i] : lo[i];
          const uint32_t l_0 = jp ? L.z : L.x, l_1 = jp ? L.w : L.y;
          const uint32_t h_0 = jp ? hb[i].z : hb[i].x, h_1 = jp ? hb[i].w : hb[i].y;
          const int ls = k < 2 ? 0 : 4;
          const uint32_t q0 = ((l_0 >> ls) & 0x0f0f0f0fu) | (((h_0 >> (2 * k)) & 0x03030303u) << 4);
          const uint32_t q1 = ((l_1 >> ls) & 0x0f0f0f0fu) | (((h_1 >> (2 * k)) & 0x03030303u) << 4);
          dp_dequant4<false>(q0, 8388640.0f, dg[i][k], 0.0f, a0[i], a0[2 + i]);  // 2^23 + 32: q - 32
          dp_dequant4<false>(q1, 8388640.0f, dg[i][k], 0.0f, a1[i], a1[2 + i]);
        }
        dp_mma_pair<NT>(acc, a0, a1, tok, g, dp_tok_chunk<W>(16 * hh + 4 * k + 2 * (t & 1) + jp, g));
      }
  }
}

// The accumulators of one row tile's segment: to y (whole tile in this CTA) or to a partial slot.
template <int NT, int WARPS>
__device__ __forceinline__ void dp_store(const DpArgs& p, int tile, float (&acc)[NT][4], float* slot) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int ni = 0; ni < NT; ++ni)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int m = 8 * ni + 2 * t + (e & 1);
      const int nl = 16 * warp + g + 8 * (e >> 1);
      const int64_t n = (int64_t)tile * (16 * WARPS) + nl;
      float v = acc[ni][e];
      acc[ni][e] = 0.0f;
      if (m >= p.M || n >= p.w.rows) continue;
      if (slot) {
        slot[m * (16 * WARPS) + nl] = v;
        continue;
      }
      if (p.bias) v += p.bias[n];
      float* dst = p.y + m * p.ldy + n;
      *dst = p.accumulate ? *dst + v : v;
    }
}

template <GgmlType W, int NT, int WARPS, int MINB>
__global__ void __launch_bounds__(32 * WARPS, MINB) dqmm_pipe_kernel(DpArgs p) {
  extern __shared__ __align__(128) unsigned char dp_smem[];
  const int S = p.stages;
  const size_t stage_bytes = dp_stage_bytes(dp_w_stage_bytes<W, WARPS>(), NT);
  const int u0 = stream_k_unit_begin(blockIdx.x, p.units, gridDim.x);
  const int u1 = stream_k_unit_begin(blockIdx.x + 1, p.units, gridDim.x);
  // Prologue: the first S-1 slices' weights before the PDL wait, then their tokens.
  for (int s = 0; s < S - 1; ++s)
    if (u0 + s < u1) dp_load_w<W, WARPS>(p, dp_smem + s * stage_bytes, u0 + s);
  pdl_wait();  // the activations may come from the kernel launched just before (PDL)
  for (int s = 0; s < S - 1; ++s) {
    if (u0 + s < u1) dp_load_tokens<W, NT, WARPS>(p, dp_smem + s * stage_bytes, u0 + s);
    cp_async_commit();
  }
  float acc[NT][4];
#pragma unroll
  for (int ni = 0; ni < NT; ++ni) acc[ni][0] = acc[ni][1] = acc[ni][2] = acc[ni][3] = 0.0f;
  int slot = 0, load_slot = S - 1;
  int seg_first = u0;  // first unit of the current tile's segment
  for (int u = u0; u < u1; ++u) {
    cp_async_wait_stages(S);
    __syncthreads();  // slice u visible to all; everyone is done with the slot loaded next
    if (p.trigger && u == u1 - 1) pdl_trigger();  // the next kernel may start its weight loads
    const int un = u + S - 1;
    if (un < u1) {
      unsigned char* st = dp_smem + load_slot * stage_bytes;
      dp_load_w<W, WARPS>(p, st, un);
      dp_load_tokens<W, NT, WARPS>(p, st, un);
    }
    cp_async_commit();
    if (p.prefetch > 0 && un + p.prefetch < u1) dp_prefetch_w<W, WARPS>(p, un + p.prefetch);
    dp_compute<W, NT, WARPS>(p, dp_smem + slot * stage_bytes, u, acc);
    if (++slot == S) slot = 0;
    if (++load_slot == S) load_slot = 0;
    const int tile = u / p.kc;
    if (u % p.kc == p.kc - 1 || u == u1 - 1) {  // the end of this CTA's segment of the tile
      const bool whole = seg_first % p.kc == 0 && u % p.kc == p.kc - 1;
      float* part = whole ? nullptr
                          : p.partial + ((size_t)(2 * blockIdx.x + (seg_first == u0 ? 0 : 1)) * p.M) * (16 * WARPS);
      dp_store<NT, WARPS>(p, tile, acc, part);
      seg_first = u + 1;
    }
  }
  cp_async_wait<0>();
}

// The tiles that CTAs share (stream_k.cuh).
__global__ void dqmm_pipe_reduce_kernel(DpArgs p, int grid) {
  pdl_wait();
  stream_k_reduce({p.y, p.ldy, p.bias, p.accumulate, p.M, p.w.rows, p.bn, p.kc, p.units, p.partial}, grid);
}
