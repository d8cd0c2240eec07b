// One-token K-quant products on the int8 tensor cores: see matvec_mma.cuh for why.
//
// A warp works on a tile of 16 weight rows over a range of superblocks (K parts of one tile are
// other warps of the same CTA). Per superblock, mma.sync multiplies the tile's quants (A: 16 rows x
// k, unsigned: Q4_K nibbles, Q6_K 6-bit values) by the activations (B: k x 8, signed Q8_K), one
// instruction per scale group (Q4_K: 32 weights, m16n8k32; Q6_K: 16 weights, m16n8k16). The
// product has only one useful column, so the 8 columns of B carry the 8 scale groups instead:
// group s's instruction gets the activations in column s and zeros elsewhere, all accumulate into
// one C, and C[row][s] ends up as group s's integer dot product of that row. Thread (g, q) of the
// warp then holds rows g and g + 8, groups 2q and 2q + 1: it applies those groups' scales (and
// Q4_K's mins, Q6_K's -32 offset, both through the activations' block sums, as the CPU does) and
// keeps a float partial sum per row; the four threads of a row and the K parts are added at the
// end, in a fixed order.
//
// The order of k inside a group is free as long as A and B agree: thread q takes 8 consecutive
// weights of a Q4_K group (one 8-byte load of 16 nibble pairs serves the low-nibble group 2c and
// the high-nibble group 2c + 1) and, for B, the same 8 activations; Q6_K keeps ggml's order.
// Q4_K's high nibbles are used in place (value * 16, the factor taken out of the scale sum
// exactly), so unpacking costs one AND per 4 weights.
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "backends/cuda/launch.cuh"
#include "backends/cuda/matvec_mma.cuh"

namespace pyresa::cuda {

namespace {

constexpr int kWarps = 8;      // per CTA
constexpr int kTile = 16;      // rows per tile (the MMA's M)
constexpr int kQ4Bytes = 144;  // Q4_K superblock: d, dmin (F16), 12 packed scale bytes, 128 quant bytes
constexpr int kQ6Ql = 128, kQ6Qh = 64, kQ6Sc = 16;  // Q6_K planes as quant.cu uploads them
constexpr int kPrefetchBlocks = 2;  // superblocks per row pulled into L2 before the PDL wait

struct MmaBatch {
  DeviceWeight w[3];
  MatvecOut out[3];
  int first_tile[4] = {0, 0, 0, 0};  // weight i owns tiles [first_tile[i], first_tile[i + 1])
  int n = 1;
  int split = 1;  // warps per tile (K parts), a divisor of kWarps
  int nb = 0;     // superblocks per row
};

__device__ __forceinline__ uint2 ld_stream8(const void* p) {  // weights: read once, skip L1
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ld_nc32(const void* p) {  // Q6_K words: the neighbours come next
  return __ldg(reinterpret_cast<const unsigned int*>(p));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16_ptr(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// c += A (16 x 32, u8) . B (32 x 8, s8)
__device__ __forceinline__ void mma_k32(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// c += A (16 x 16, u8) . B (16 x 8, s8)
__device__ __forceinline__ void mma_k16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(b0));
}

// The activation row's planes (prepare_activations, Q8_K): int8 quants, float d per superblock,
// int16 sums of each 16 quants.
struct Act {
  const int8_t* q;
  const float* d;
  const int16_t* bsum;
};
__device__ __forceinline__ Act act_planes(const uint8_t* act, int64_t cols) {
  const int64_t nb = cols / QK_K;
  return {reinterpret_cast<const int8_t*>(act), reinterpret_cast<const float*>(act + cols),
          reinterpret_cast<const int16_t*>(act + cols + 4 * nb)};
}

// Q4_K scales of groups 2q and 2q + 1 from the header words y, z, w (scale bytes 0-3, 4-7, 8-11),
// as ggml's get_scale_min_k4: scale bytes in sc (byte 0: group 2q, byte 1: 2q + 1), mins in m.
__device__ __forceinline__ void q4k_pair_scales(uint32_t y, uint32_t z, uint32_t w, int q, uint32_t& sc, uint32_t& m) {
  const int sh = (q & 1) * 16;
  const uint32_t ys = y >> sh, zs = z >> sh, ws = w >> sh;
  const uint32_t sc_lo = ys & 0x3f3fu, m_lo = zs & 0x3f3fu;                           // groups 0-3
  const uint32_t sc_hi = (ws & 0x0f0fu) | ((ys >> 2) & 0x3030u);                      // groups 4-7
  const uint32_t m_hi = ((ws >> 4) & 0x0f0fu) | ((zs >> 2) & 0x3030u);
  sc = q < 2 ? sc_lo : sc_hi;
  m = q < 2 ? m_lo : m_hi;
}

// What one thread loads for one Q4_K superblock of its two rows: headers, 4 x 8 quant bytes per
// row, its 8 activations (group g), the activations' block sums of groups 2q, 2q + 1, their scale.
struct Q4kLoads {
  uint4 ha, hb;
  uint2 qa[4], qb[4];
  uint2 av, bs;
  float ad;
};
__device__ __forceinline__ void q4k_load(Q4kLoads& L, const uint8_t* pa, const uint8_t* pb, int b, const Act& a, int g,
                                         int q) {
  const uint8_t* ba = pa + (size_t)b * kQ4Bytes;
  const uint8_t* bb = pb + (size_t)b * kQ4Bytes;
  L.ha = ld_stream16(ba);
  L.hb = ld_stream16(bb);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    L.qa[c] = ld_stream8(ba + 16 + 32 * c + 8 * q);
    L.qb[c] = ld_stream8(bb + 16 + 32 * c + 8 * q);
  }
  L.av = *reinterpret_cast<const uint2*>(a.q + (size_t)b * QK_K + 32 * g + 8 * q);
  // (the sums plane is only 4-byte aligned when the row has an odd number of superblocks)
  const uint32_t* bsp = reinterpret_cast<const uint32_t*>(a.bsum + (size_t)b * 16 + 4 * q);
  L.bs = make_uint2(bsp[0], bsp[1]);
  L.ad = a.d[b];
}

// One superblock's products and scaling for the two rows (see the file comment).
__device__ __forceinline__ void q4k_compute(const Q4kLoads& L, int g, int q, float& acc_a, float& acc_b) {
  int acc[4] = {0, 0, 0, 0};
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const int c = s >> 1;
    const uint32_t mask = (s & 1) ? 0xf0f0f0f0u : 0x0f0f0f0fu;
    const uint32_t bx = g == s ? L.av.x : 0u, by = g == s ? L.av.y : 0u;
    mma_k32(acc, L.qa[c].x & mask, L.qb[c].x & mask, L.qa[c].y & mask, L.qb[c].y & mask, bx, by);
  }
  // acc: [row a, group 2q], [row a, 2q + 1] (x 16: high nibbles), [row b, 2q], [row b, 2q + 1]
  // block sums of groups 2q and 2q + 1 (each the sum of two 16-sums), as int16 pairs for dp2a
  const int s0 = (int)(int16_t)(L.bs.x & 0xffffu) + ((int)L.bs.x >> 16);
  const int s1 = (int)(int16_t)(L.bs.y & 0xffffu) + ((int)L.bs.y >> 16);
  const int spair = (s0 & 0xffff) | (s1 << 16);
  const float ad16 = L.ad * 0.0625f;
  uint32_t sc, m;
  q4k_pair_scales(L.ha.y, L.ha.z, L.ha.w, q, sc, m);
  int isum = ((acc[0] * (int)(sc & 0xffu)) << 4) + acc[1] * (int)(sc >> 8);
  int msum = __dp2a_lo(spair, (int)m, 0);
  acc_a = fmaf(ad16 * h2f((uint16_t)(L.ha.x & 0xffffu)), (float)isum, acc_a);
  acc_a = fmaf(-L.ad * h2f((uint16_t)(L.ha.x >> 16)), (float)msum, acc_a);
  q4k_pair_scales(L.hb.y, L.hb.z, L.hb.w, q, sc, m);
  isum = ((acc[2] * (int)(sc & 0xffu)) << 4) + acc[3] * (int)(sc >> 8);
  msum = __dp2a_lo(spair, (int)m, 0);
  acc_b = fmaf(ad16 * h2f((uint16_t)(L.hb.x & 0xffffu)), (float)isum, acc_b);
  acc_b = fmaf(-L.ad * h2f((uint16_t)(L.hb.x >> 16)), (float)msum, acc_b);
}

// One warp: rows ra (= r0 + g) and rb (= r0 + g + 8) of a Q4_K weight (clamped into the matrix;
// the caller discards rows past the end), superblocks [b0, b1); adds the two rows' partial sums
// over this thread's groups.
__device__ __forceinline__ void q4k_tile(const DeviceWeight& w, int64_t ra, int64_t rb, int b0, int b1, const Act& a,
                                         int g, int q, float& acc_a, float& acc_b) {
  const uint8_t* pa = w.data + ra * w.row_bytes;
  const uint8_t* pb = w.data + rb * w.row_bytes;
  for (int b = b0; b < b1; ++b) {
    Q4kLoads cur;
    q4k_load(cur, pa, pb, b, a, g, q);
    q4k_compute(cur, g, q, acc_a, acc_b);
  }
}

// MODE 2: the warp's rows stream through a ring of kStages shared-memory stages by cp.async
// (one stage = one superblock of its 16 rows), kStages - 1 superblocks in flight without holding
// registers. Written because the register kernel keeps only one superblock (2.3 KB) per warp in
// flight; measured no faster (run 11-mmv), so bytes in flight per warp are not what holds it.
constexpr int kStages = 3;
constexpr int kRowStride = 160;  // bytes per row of a stage: 144 + 16 makes the 8-byte reads conflict-free
constexpr int kStageBytes = kTile * kRowStride;
constexpr int kRingBytes = kStages * kStageBytes;  // per warp

__device__ __forceinline__ void q4k_tile_async(const DeviceWeight& w, int64_t r0, int b0, int b1, const Act& a, int g,
                                               int q, int lane, uint8_t* ring, float& acc_a, float& acc_b) {
  // This lane's 16-byte chunks of a stage: chunk i = lane + 32k (i < 144) is row i / 9, bytes 16 (i % 9).
  const uint8_t* src[5];
  uint32_t dst[5];
#pragma unroll
  for (int k = 0; k < 5; ++k) {
    const int i = lane + 32 * k, r = i / 9, j = i % 9;
    const int64_t row = std::min<int64_t>(r0 + r, w.rows - 1);
    src[k] = w.data + row * w.row_bytes + 16 * j;
    dst[k] = smem_addr(ring) + r * kRowStride + 16 * j;
  }
  auto issue = [&](int b, int stage) {
#pragma unroll
    for (int k = 0; k < 5; ++k)
      if (k < 4 || lane < 16) cp_async16_ptr(dst[k] + stage * kStageBytes, src[k] + (size_t)b * kQ4Bytes);
  };
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (b0 + st < b1) issue(b0 + st, st);
    cp_async_commit();
  }
  for (int i = 0; b0 + i < b1; ++i) {
    const int b = b0 + i;
    if (b + kStages - 1 < b1) issue(b + kStages - 1, (i + kStages - 1) % kStages);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // this lane's copies of superblock b have landed
    __syncwarp();                  // and every lane's
    const uint8_t* st = ring + (i % kStages) * kStageBytes;
    Q4kLoads L;
    L.ha = *reinterpret_cast<const uint4*>(st + g * kRowStride);
    L.hb = *reinterpret_cast<const uint4*>(st + (g + 8) * kRowStride);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      L.qa[c] = *reinterpret_cast<const uint2*>(st + g * kRowStride + 16 + 32 * c + 8 * q);
      L.qb[c] = *reinterpret_cast<const uint2*>(st + (g + 8) * kRowStride + 16 + 32 * c + 8 * q);
    }
    L.av = *reinterpret_cast<const uint2*>(a.q + (size_t)b * QK_K + 32 * g + 8 * q);
    const uint32_t* bsp = reinterpret_cast<const uint32_t*>(a.bsum + (size_t)b * 16 + 4 * q);
    L.bs = make_uint2(bsp[0], bsp[1]);
    L.ad = a.d[b];
    q4k_compute(L, g, q, acc_a, acc_b);
    __syncwarp();  // the stage is refilled by the next iteration's copies
  }
  cp_async_wait<0>();
}

// Q6_K group j (16 weights: half h = j / 8, quarter k = (j / 2) % 4, part l = j % 2) of one row,
// thread q's 4 weights as unsigned bytes 0..63, from ql words A (k even) / B (k odd) and qh word H.
__device__ __forceinline__ uint32_t q6k_word(uint32_t A, uint32_t B, uint32_t H, int k) {
  const uint32_t lo = k == 0 ? (A & 0x0f0f0f0fu) : k == 1 ? (B & 0x0f0f0f0fu) : k == 2 ? ((A >> 4) & 0x0f0f0f0fu)
                                                                                     : ((B >> 4) & 0x0f0f0f0fu);
  const uint32_t hi = (k == 0 ? (H << 4) : k == 1 ? (H << 2) : k == 2 ? H : (H >> 2)) & 0x30303030u;
  return lo | hi;
}

// Q6_K planes of a weight (quant.cu uploads Q6_K as ql, qh, sc and d planes) and the block
// indices of one warp's two rows.
struct Q6Rows {
  const uint8_t* ql;
  const uint8_t* qh;
  const int8_t* sc;
  const uint16_t* d;
  int64_t ba, bb;  // block index of superblock 0 of rows a and b
};
__device__ __forceinline__ Q6Rows q6k_rows(const DeviceWeight& w, int64_t ra, int64_t rb) {
  const int64_t nb = w.cols / QK_K, nblk = w.rows * nb;
  return {w.data, w.data + nblk * kQ6Ql, reinterpret_cast<const int8_t*>(w.data + nblk * (kQ6Ql + kQ6Qh)),
          reinterpret_cast<const uint16_t*>(w.data + nblk * (kQ6Ql + kQ6Qh + kQ6Sc)), ra * nb, rb * nb};
}

// What one thread loads for one Q6_K superblock of its two rows.
struct Q6kLoads {
  uint32_t la[2][2][2], lb[2][2][2], ha[2][2], hb[2][2];  // ql words [h][l][k & 1], qh words [h][l]
  uint32_t sca0, sca1, scb0, scb1;                         // int8 scale pairs (groups 2q, 2q+1 / 8+2q, 9+2q)
  uint32_t dab;                                            // F16 d of rows a (low) and b (high)
  uint32_t av0, av1, bs0, bs1;                             // activations and their block sums
  float ad;
};
__device__ __forceinline__ void q6k_load(Q6kLoads& L, const Q6Rows& R, int b, const Act& a, int g, int q) {
  const int64_t ba = R.ba + b, bb = R.bb + b;
  // words: ql at 64h + 32(k & 1) + 16l + 4q, qh at 32h + 16l + 4q
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int l = 0; l < 2; ++l) {
#pragma unroll
      for (int k1 = 0; k1 < 2; ++k1) {
        L.la[h][l][k1] = ld_nc32(R.ql + ba * kQ6Ql + 64 * h + 32 * k1 + 16 * l + 4 * q);
        L.lb[h][l][k1] = ld_nc32(R.ql + bb * kQ6Ql + 64 * h + 32 * k1 + 16 * l + 4 * q);
      }
      L.ha[h][l] = ld_nc32(R.qh + ba * kQ6Qh + 32 * h + 16 * l + 4 * q);
      L.hb[h][l] = ld_nc32(R.qh + bb * kQ6Qh + 32 * h + 16 * l + 4 * q);
    }
  L.sca0 = *reinterpret_cast<const uint16_t*>(R.sc + ba * kQ6Sc + 2 * q);
  L.sca1 = *reinterpret_cast<const uint16_t*>(R.sc + ba * kQ6Sc + 8 + 2 * q);
  L.scb0 = *reinterpret_cast<const uint16_t*>(R.sc + bb * kQ6Sc + 2 * q);
  L.scb1 = *reinterpret_cast<const uint16_t*>(R.sc + bb * kQ6Sc + 8 + 2 * q);
  L.dab = (uint32_t)R.d[ba] | ((uint32_t)R.d[bb] << 16);
  // activations: this thread supplies column g of group j = g (set 0) and j = 8 + g (set 1)
  L.av0 = *reinterpret_cast<const uint32_t*>(a.q + (size_t)b * QK_K + 16 * g + 4 * q);
  L.av1 = *reinterpret_cast<const uint32_t*>(a.q + (size_t)b * QK_K + 128 + 16 * g + 4 * q);
  L.bs0 = *reinterpret_cast<const uint32_t*>(a.bsum + (size_t)b * 16 + 2 * q);      // groups 2q, 2q+1
  L.bs1 = *reinterpret_cast<const uint32_t*>(a.bsum + (size_t)b * 16 + 8 + 2 * q);  // 8+2q, 9+2q
  L.ad = a.d[b];
}

__device__ __forceinline__ void q6k_compute(const Q6kLoads& L, int g, float& acc_a, float& acc_b) {
  int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int h = j >> 3, k = (j >> 1) & 3, l = j & 1;
    const uint32_t wa = q6k_word(L.la[h][l][0], L.la[h][l][1], L.ha[h][l], k);
    const uint32_t wb = q6k_word(L.lb[h][l][0], L.lb[h][l][1], L.hb[h][l], k);
    const uint32_t bv = g == (j & 7) ? (h ? L.av1 : L.av0) : 0u;
    if (h == 0) mma_k16(c0, wa, wb, bv);
    else mma_k16(c1, wa, wb, bv);
  }
  // sum_j sc_j * (dot_j - 32 * bsum_j) over this thread's 4 groups, per row (dp2a: the int16
  // block sums of a pair times the pair's int8 scales, bytes 0 and 1)
  const uint32_t sca0 = L.sca0, sca1 = L.sca1, scb0 = L.scb0, scb1 = L.scb1;
  const int ia = c0[0] * (int)(int8_t)(sca0 & 0xffu) + c0[1] * (int)(int8_t)(sca0 >> 8) +
                 c1[0] * (int)(int8_t)(sca1 & 0xffu) + c1[1] * (int)(int8_t)(sca1 >> 8) -
                 32 * (__dp2a_lo((int)L.bs0, (int)sca0, 0) + __dp2a_lo((int)L.bs1, (int)sca1, 0));
  const int ib = c0[2] * (int)(int8_t)(scb0 & 0xffu) + c0[3] * (int)(int8_t)(scb0 >> 8) +
                 c1[2] * (int)(int8_t)(scb1 & 0xffu) + c1[3] * (int)(int8_t)(scb1 >> 8) -
                 32 * (__dp2a_lo((int)L.bs0, (int)scb0, 0) + __dp2a_lo((int)L.bs1, (int)scb1, 0));
  acc_a = fmaf(L.ad * h2f((uint16_t)(L.dab & 0xffffu)), (float)ia, acc_a);
  acc_b = fmaf(L.ad * h2f((uint16_t)(L.dab >> 16)), (float)ib, acc_b);
}

// As q4k_tile for Q6_K (planes ql, qh, sc, d; 16 groups of 16: two C sets of 8 columns).
__device__ __forceinline__ void q6k_tile(const DeviceWeight& w, int64_t ra, int64_t rb, int b0, int b1, const Act& a,
                                         int g, int q, float& acc_a, float& acc_b) {
  const Q6Rows R = q6k_rows(w, ra, rb);
  for (int b = b0; b < b1; ++b) {
    Q6kLoads cur;
    q6k_load(cur, R, b, a, g, q);
    q6k_compute(cur, g, acc_a, acc_b);
  }
}

// MODE 3 (one weight type per launch): the loads of the next superblock are issued before the
// current one's products, also across items (the next item's first superblock before this item's
// last products and its K-part reduction), so a warp always has one superblock in flight while it
// computes. Written because modes 1 and 2 issue an item's first loads only after the previous
// item's reduction: with 3-4 superblocks per item (gate+up's K split) that latency is paid every
// item (run 12: a warp reading the same bytes with nothing else to do reaches 2.6 TB/s,
// bench/membench_patterns.py).
struct Q4Rows {
  const uint8_t* pa;
  const uint8_t* pb;
};
__device__ __forceinline__ Q4Rows q4k_rows(const DeviceWeight& w, int64_t ra, int64_t rb) {
  return {w.data + ra * w.row_bytes, w.data + rb * w.row_bytes};
}
__device__ __forceinline__ void load_sb(Q4kLoads& L, const Q4Rows& R, int b, const Act& a, int g, int q) {
  q4k_load(L, R.pa, R.pb, b, a, g, q);
}
__device__ __forceinline__ void load_sb(Q6kLoads& L, const Q6Rows& R, int b, const Act& a, int g, int q) {
  q6k_load(L, R, b, a, g, q);
}
__device__ __forceinline__ void compute_sb(const Q4kLoads& L, int g, int q, float& acc_a, float& acc_b) {
  q4k_compute(L, g, q, acc_a, acc_b);
}
__device__ __forceinline__ void compute_sb(const Q6kLoads& L, int g, int, float& acc_a, float& acc_b) {
  q6k_compute(L, g, acc_a, acc_b);
}
template <GgmlType T>
struct TypeOf;
template <>
struct TypeOf<GgmlType::Q4_K> {
  using Loads = Q4kLoads;
  using Rows = Q4Rows;
  static __device__ __forceinline__ Rows rows(const DeviceWeight& w, int64_t ra, int64_t rb) { return q4k_rows(w, ra, rb); }
};
template <>
struct TypeOf<GgmlType::Q6_K> {
  using Loads = Q6kLoads;
  using Rows = Q6Rows;
  static __device__ __forceinline__ Rows rows(const DeviceWeight& w, int64_t ra, int64_t rb) { return q6k_rows(w, ra, rb); }
};

// The grid holds at most as many CTAs as fit on the GPU at once, and each CTA loops over item
// groups gridDim.x apart (a group: kWarps warps = kWarps / split tiles x split K parts), so a
// product never runs a short second wave of whole tiles (measured: with one 16-row tile per warp
// and as many warps as tiles, gate+up ran 1.12 waves, and its tail cost more than the tensor
// cores saved).
struct Item {
  int tile, kpart, wi, b0, b1;
  int64_t r0;
  bool live;    // a tile of the batch (the last group may hold fewer)
  __device__ bool work() const { return live && b0 < b1; }
};
__device__ __forceinline__ Item item_of(const MmaBatch& batch, int grp, int warp, int n_tiles) {
  Item it;
  const int gw = grp * kWarps + warp;
  it.tile = gw / batch.split;
  it.kpart = gw % batch.split;
  it.wi = (batch.n > 2 && it.tile >= batch.first_tile[2]) ? 2 : (batch.n > 1 && it.tile >= batch.first_tile[1]) ? 1 : 0;
  it.r0 = (int64_t)(it.tile - batch.first_tile[it.wi]) * kTile;
  it.b0 = (int)((int64_t)batch.nb * it.kpart / batch.split);
  it.b1 = (int)((int64_t)batch.nb * (it.kpart + 1) / batch.split);
  it.live = it.tile < n_tiles;
  return it;
}

// The weights do not depend on the previous kernel: pull the start of the CTA's first item's rows
// into L2 while it finishes (PDL), then wait for the activations. Only kPrefetchBlocks superblocks
// per row: the grid is one wave, so prefetching whole items would ask for the whole matrix at once
// (gate+up: 76 MB, more than the 50 MB L2).
__device__ __forceinline__ void prefetch_first_item(const MmaBatch& batch, const Item& it, int lane) {
  const DeviceWeight& w = batch.w[it.wi];
  const int b0 = it.b0, b1 = min(it.b1, it.b0 + kPrefetchBlocks);
  if (it.live && lane < kTile && it.r0 + lane < w.rows && b1 > b0) {
    const int64_t r = it.r0 + lane;
    if (w.type == GgmlType::Q4_K) {
      prefetch_l2_bulk(w.data + r * w.row_bytes + (size_t)b0 * kQ4Bytes, (uint32_t)((b1 - b0) * kQ4Bytes));
    } else {
      const int64_t nblk = w.rows * batch.nb, blk = r * batch.nb + b0;
      prefetch_l2_bulk(w.data + blk * kQ6Ql, (uint32_t)((b1 - b0) * kQ6Ql));
      prefetch_l2_bulk(w.data + nblk * kQ6Ql + blk * kQ6Qh, (uint32_t)((b1 - b0) * kQ6Qh));
    }
  }
}

// The warps of one tile's K parts (split consecutive warps) wait for each other: a named barrier
// per tile, so the other tiles of the CTA go on (ids 1-8; 0 is __syncthreads').
__device__ __forceinline__ void tile_barrier(int warp, int split) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(1 + warp / split), "r"(32 * split) : "memory");
}

// An item's end: the row's four threads (groups 2q, 2q + 1) added in a fixed order, then the
// tile's K parts (warps [warp - kpart, warp - kpart + split) of this CTA, through shared memory),
// then the row's output. Every warp of the tile calls it once per group (it has barriers).
__device__ __forceinline__ void finish_item(const MmaBatch& batch, const Item& it, float acc_a, float acc_b,
                                            float (&part)[kWarps][kTile], int lane, int warp) {
  const int g = lane >> 2, q = lane & 3;
  acc_a += __shfl_xor_sync(0xffffffffu, acc_a, 1);
  acc_a += __shfl_xor_sync(0xffffffffu, acc_a, 2);
  acc_b += __shfl_xor_sync(0xffffffffu, acc_b, 1);
  acc_b += __shfl_xor_sync(0xffffffffu, acc_b, 2);
  bool write = it.live;
  if (batch.split > 1) {
    if (q == 0) {
      part[warp][g] = acc_a;
      part[warp][g + 8] = acc_b;
    }
    tile_barrier(warp, batch.split);
    if (it.kpart == 0 && lane < kTile) {  // the tile's first warp adds its parts
      float v = part[warp][lane];
      for (int k = 1; k < batch.split; ++k) v += part[warp + k][lane];
      acc_a = v;
    }
    tile_barrier(warp, batch.split);  // part is reused by the next group
    write = it.live && it.kpart == 0;
  } else {
    // lane l < 16 takes row l: row g from lane 4g (acc_a), row g + 8 from lane 4g (acc_b)
    const float va = __shfl_sync(0xffffffffu, acc_a, (lane & 7) * 4);
    const float vb = __shfl_sync(0xffffffffu, acc_b, (lane & 7) * 4);
    acc_a = lane < 8 ? va : vb;
  }
  const DeviceWeight& w = batch.w[it.wi];
  const int64_t row = it.r0 + lane;
  if (write && lane < kTile && row < w.rows) {
    const MatvecOut& o = batch.out[it.wi];
    float* y = o.y + row;
    const float r = o.bias ? acc_a + o.bias[row] : acc_a;
    *y = o.accumulate ? *y + r : r;
  }
}

template <int MODE>
__global__ void __launch_bounds__(32 * kWarps, 3) matvec_mma_kernel(MmaBatch batch, const uint8_t* act) {
  __shared__ float part[kWarps][kTile];
  extern __shared__ __align__(16) uint8_t ring_all[];  // MODE 2: kRingBytes per warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int n_tiles = batch.first_tile[batch.n];
  const int n_groups = (n_tiles * batch.split + kWarps - 1) / kWarps;
  prefetch_first_item(batch, item_of(batch, blockIdx.x, warp, n_tiles), lane);
  pdl_trigger();
  pdl_wait();
  for (int grp = blockIdx.x; grp < n_groups; grp += gridDim.x) {
    const Item it = item_of(batch, grp, warp, n_tiles);
    const DeviceWeight& w = batch.w[it.wi];
    float acc_a = 0.0f, acc_b = 0.0f;
    if (it.live) {
      const Act a = act_planes(act, w.cols);
      const int64_t ra = std::min<int64_t>(it.r0 + g, w.rows - 1), rb = std::min<int64_t>(it.r0 + g + 8, w.rows - 1);
      if (MODE == 2 && w.type == GgmlType::Q4_K)
        q4k_tile_async(w, it.r0, it.b0, it.b1, a, g, q, lane, ring_all + warp * kRingBytes, acc_a, acc_b);
      else if (w.type == GgmlType::Q4_K) q4k_tile(w, ra, rb, it.b0, it.b1, a, g, q, acc_a, acc_b);
      else q6k_tile(w, ra, rb, it.b0, it.b1, a, g, q, acc_a, acc_b);
    }
    finish_item(batch, it, acc_a, acc_b, part, lane, warp);
  }
}

// MODE 3 (every weight of the launch of type T): see Q4Rows above. One superblock's loads are
// always in flight: the next superblock of the item, or at the item's last one the next item's
// first (issued before this item's products and reduction). Two load buffers alternate by unit
// (step(A, B) then step(B, A)): a copy from the next buffer into the current one would wait for
// the loads just issued (call 2 of run 12 did that: no overlap, 3.24 ms per token).
template <GgmlType T>
__global__ void __launch_bounds__(32 * kWarps, 2) matvec_mma_pipe_kernel(MmaBatch batch, const uint8_t* act) {
  using TT = TypeOf<T>;
  using Loads = typename TT::Loads;
  __shared__ float part[kWarps][kTile];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int n_tiles = batch.first_tile[batch.n];
  const int n_groups = (n_tiles * batch.split + kWarps - 1) / kWarps;
  int grp = blockIdx.x;
  Item it = item_of(batch, grp, warp, n_tiles);
  prefetch_first_item(batch, it, lane);
  pdl_trigger();
  pdl_wait();
  const Act a = act_planes(act, batch.w[0].cols);
  auto rows_of = [&](const Item& x) {
    const DeviceWeight& w = batch.w[x.wi];
    return TT::rows(w, std::min<int64_t>(x.r0 + g, w.rows - 1), std::min<int64_t>(x.r0 + g + 8, w.rows - 1));
  };
  auto next_item = [&](int gi) {
    Item x = item_of(batch, gi, warp, n_tiles);
    x.live = x.live && gi < n_groups;
    return x;
  };
  // Groups with nothing for this warp (past the last tile, or an empty K part) still take part in
  // the tile's reduction; returns whether a group with work is left.
  auto skip_idle = [&]() {
    bool skipped = false;
    while (grp < n_groups && !it.work()) {
      finish_item(batch, it, 0.0f, 0.0f, part, lane, warp);
      grp += gridDim.x;
      it = next_item(grp);
      skipped = true;
    }
    return skipped;
  };
  float acc_a = 0.0f, acc_b = 0.0f;
  int b = 0;
  // One unit (superblock b of item it, whose loads are in cur): the next unit's loads into nxt,
  // cur's products; at the item's end its reduction and the move to the next item with work.
  // Returns false when the warp's groups are done; otherwise nxt holds the next unit.
  auto step = [&](Loads& cur, Loads& nxt) -> bool {
    const bool in_item = b + 1 < it.b1;
    const int ngrp = grp + gridDim.x;
    const Item nx = next_item(ngrp);
    if (in_item) load_sb(nxt, rows_of(it), b + 1, a, g, q);
    else if (nx.work()) load_sb(nxt, rows_of(nx), nx.b0, a, g, q);
    compute_sb(cur, g, q, acc_a, acc_b);
    if (in_item) {
      ++b;
      return true;
    }
    finish_item(batch, it, acc_a, acc_b, part, lane, warp);
    acc_a = acc_b = 0.0f;
    grp = ngrp;
    it = nx;
    if (skip_idle()) {
      if (grp >= n_groups) return false;
      load_sb(nxt, rows_of(it), it.b0, a, g, q);  // not prefetched: idle groups came between
    } else if (grp >= n_groups) {
      return false;
    }
    b = it.b0;
    return true;
  };
  skip_idle();
  if (grp >= n_groups) return;
  Loads A, B;
  b = it.b0;
  load_sb(A, rows_of(it), b, a, g, q);
  while (step(A, B) && step(B, A)) {
  }
}

// CTAs of a kernel that fit on the GPU at once (asked once per kernel).
template <class Kernel>
int resident_ctas(Kernel kernel, size_t smem) {
  int dev = 0, sms = 0, per_sm = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (smem > 48 * 1024)
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  PYRESA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * kWarps, smem));
  return std::max(1, sms * per_sm);
}
template <int MODE>
int resident_ctas() {
  static int n = resident_ctas(matvec_mma_kernel<MODE>, MODE == 2 ? (size_t)kWarps * kRingBytes : 0);
  return n;
}
template <GgmlType T>
int resident_pipe_ctas() {
  static int n = resident_ctas(matvec_mma_pipe_kernel<T>, 0);
  return n;
}

// K parts per tile: the fewest passes of the resident warps times the superblocks of an item
// (+ a fixed cost per item in superblocks: the first loads' latency and the reduction, ~1.5 in
// modes 1 and 2; in mode 3 the first loads overlap the previous item, ~0.5 is left).
int choose_split(int n_tiles, int nb, int resident_warps, double item_cost, int min_blocks_per_part) {
  int best = 1;
  double best_cost = 1e30;
  for (int s = 1; s <= kWarps; s *= 2) {
    if (s > 1 && nb < min_blocks_per_part * s) break;
    const double passes = std::ceil((double)n_tiles * s / resident_warps);
    const double cost = passes * ((double)nb / s + item_cost);
    if (cost < best_cost - 1e-9) {
      best_cost = cost;
      best = s;
    }
  }
  return best;
}

}  // namespace

int& matvec_mma_mode() {
  static int m = 0;
  return m;
}
int& matvec_mma_split() {
  static int s = 0;
  return s;
}
int& matvec_mma_grid_cap() {
  static int c = 0;
  return c;
}

bool matvec_mma(const DeviceWeight* ws, const MatvecOut* outs, int n_w, const void* act, cudaStream_t s, bool dry_run) {
  if (!matvec_mma_mode() || n_w < 1 || n_w > 3) return false;
  const int64_t cols = ws[0].cols;
  if (cols % QK_K || cols / QK_K > (1 << 20)) return false;
  for (int i = 0; i < n_w; ++i)
    if ((ws[i].type != GgmlType::Q4_K && ws[i].type != GgmlType::Q6_K) || ws[i].cols != cols || ws[i].rows < 1)
      return false;
  if (dry_run) return true;
  MmaBatch b;
  b.n = n_w;
  b.nb = (int)(cols / QK_K);
  int tiles = 0;
  for (int i = 0; i < n_w; ++i) {
    b.w[i] = ws[i];
    b.out[i] = outs[i];
    b.first_tile[i] = tiles;
    tiles += (int)ceil_div(ws[i].rows, (int64_t)kTile);
  }
  for (int i = n_w; i < 4; ++i) b.first_tile[i] = tiles;
  int mode = matvec_mma_mode();
  bool one_type = true;
  for (int i = 1; i < n_w; ++i) one_type = one_type && ws[i].type == ws[0].type;
  if (mode == 3 && !one_type) mode = 1;  // the pipelined kernel takes one weight type per launch
  const bool q4 = ws[0].type == GgmlType::Q4_K;
  const int resident = mode == 3 ? (q4 ? resident_pipe_ctas<GgmlType::Q4_K>() : resident_pipe_ctas<GgmlType::Q6_K>())
                       : mode == 2 ? resident_ctas<2>()
                                   : resident_ctas<1>();
  const int forced = matvec_mma_split();
  b.split = forced == 1 || forced == 2 || forced == 4 || forced == 8
                ? forced
                : choose_split(tiles, b.nb, resident * kWarps, mode == 3 ? 0.5 : 1.5, mode == 3 ? 1 : 2);
  const int groups = (int)ceil_div((int64_t)tiles * b.split, (int64_t)kWarps);
  const int grid = std::min(groups, matvec_mma_grid_cap() > 0 ? matvec_mma_grid_cap() : resident);
  const auto* a = static_cast<const uint8_t*>(act);
  if (mode == 3 && q4) launch(matvec_mma_pipe_kernel<GgmlType::Q4_K>, grid, 32 * kWarps, 0, s, b, a);
  else if (mode == 3) launch(matvec_mma_pipe_kernel<GgmlType::Q6_K>, grid, 32 * kWarps, 0, s, b, a);
  else if (mode == 2) launch(matvec_mma_kernel<2>, grid, 32 * kWarps, (size_t)kWarps * kRingBytes, s, b, a);
  else launch(matvec_mma_kernel<1>, grid, 32 * kWarps, 0, s, b, a);
  PYRESA_CUDA_LAUNCH_CHECK();
  return true;
}

}  // namespace pyresa::cuda
