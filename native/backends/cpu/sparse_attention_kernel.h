// The sparse attention kernel, written once over a small vector interface `O` that each ISA
// file (sparse_attention_{scalar,avx2,avx512}.cpp) defines and then instantiates:
//
//   O::Vec, O::W                       a vector of W floats
//   O::kAccRegs                        vector registers the kernel may keep accumulators in
//   zero, set1, load, store            floats; load_part/store_part touch only the first n lanes
//   load_h, load_h_part                W (or n) halves widened to floats, other lanes 0
//   add, sub, mul, fma(a, b, c)=a*b+c
//   keep_first(v, n, fill)             lanes >= n replaced by fill
//   hmax, hsum                         horizontal max / sum
//   lane_sums(const Vec v[W])          lane i = sum of v[i]'s lanes (a transposed reduction)
//   exp                                e^x, ~2 ulp; e^x for x < -87 may give ~1e-38 instead of 0
//
// Everything here has internal linkage (anonymous namespace): each ISA's instantiation stays in
// its own translation unit, compiled with its own flags, and no std:: template is instantiated
// (a shared inline std::min compiled with AVX-512 could otherwise be picked by the linker for
// baseline code).
//
// Per tile of up to W tokens of one contiguous span, for up to 8 query heads at once:
//   scores: each K row is widened once and multiplied into all heads' accumulators, several
//           tokens interleaved (independent FMA chains); the W per-token accumulators of a head
//           are then reduced together by lane_sums.
//   softmax: tile max, rescale factor f = e^(m_old - m_new), p = e^(s - m_new), l = l·f + Σp.
//   values: per slice of a few vectors of D, the heads' accumulators stay in registers over the
//           tile's V rows (scaled by f first), each V row widened once.
#pragma once
#include <math.h>
#include <cstdint>

#include "backends/cpu/causal_attention.h"
#include "backends/cpu/sparse_attention.h"

namespace pyresa::cpu {
namespace {

// How many independent accumulator sets to interleave so that GT heads keep enough FMA chains
// in flight (FMA latency x throughput is ~8 on current cores) within O::kAccRegs registers.
template <class O, int GT>
constexpr int unroll() {
  return GT * 4 <= O::kAccRegs ? 4 : GT * 3 <= O::kAccRegs ? 3 : GT * 2 <= O::kAccRegs ? 2 : 1;
}

// dots[g][t0 + u] = per-lane partial products q_g * k_(t0+u), for TT tokens at once.
template <class O, int GT, int TT>
inline void dot_tokens(const float* q, int D, const char* krows, size_t k_nb1, int t0, typename O::Vec (*dots)[O::W]) {
  using Vec = typename O::Vec;
  constexpr int W = O::W;
  const int full = D - D % W;
  const uint16_t* kr[TT];
  for (int u = 0; u < TT; ++u) kr[u] = reinterpret_cast<const uint16_t*>(krows + (t0 + u) * k_nb1);
  Vec a[TT][GT];
  for (int u = 0; u < TT; ++u)
    for (int g = 0; g < GT; ++g) a[u][g] = O::zero();
  for (int c = 0; c < full; c += W) {
    Vec kf[TT];
    for (int u = 0; u < TT; ++u) kf[u] = O::load_h(kr[u] + c);
    for (int g = 0; g < GT; ++g) {
      const Vec qv = O::load(q + g * D + c);
      for (int u = 0; u < TT; ++u) a[u][g] = O::fma(qv, kf[u], a[u][g]);
    }
  }
  if (full < D) {
    const int w = D - full;
    for (int g = 0; g < GT; ++g) {
      const Vec qv = O::load_part(q + g * D + full, w);
      for (int u = 0; u < TT; ++u) a[u][g] = O::fma(qv, O::load_h_part(kr[u] + full, w), a[u][g]);
    }
  }
  for (int u = 0; u < TT; ++u)
    for (int g = 0; g < GT; ++g) dots[g][t0 + u] = a[u][g];
}

// acc[g][c, c + CT*W) = acc * f[g] + sum_t p[g][t] * v_t over the tile's n rows (CT full vectors).
template <class O, int GT, int CT>
inline void accumulate_values(int D, int c, int n, const char* vrows, size_t v_nb1, const float (*p)[O::W],
                              const float* f, float* acc) {
  using Vec = typename O::Vec;
  constexpr int W = O::W;
  Vec a[CT][GT];
  for (int g = 0; g < GT; ++g) {
    const Vec fg = O::set1(f[g]);
    for (int u = 0; u < CT; ++u) a[u][g] = O::mul(O::load(acc + g * D + c + u * W), fg);
  }
  for (int t = 0; t < n; ++t) {
    const uint16_t* vr = reinterpret_cast<const uint16_t*>(vrows + t * v_nb1) + c;
    Vec vf[CT];
    for (int u = 0; u < CT; ++u) vf[u] = O::load_h(vr + u * W);
    for (int g = 0; g < GT; ++g) {
      const Vec pb = O::set1(p[g][t]);
      for (int u = 0; u < CT; ++u) a[u][g] = O::fma(pb, vf[u], a[u][g]);
    }
  }
  for (int u = 0; u < CT; ++u)
    for (int g = 0; g < GT; ++g) O::store(acc + g * D + c + u * W, a[u][g]);
}

// One tile of n tokens for GT rows (query heads) whose q rows are q + g*D. n_valid (or null: all
// n) gives each row's unmasked prefix of the tile: a row's masked keys get probability 0 and add
// exactly nothing, so a row's numbers do not depend on which other rows share the tile.
template <class O, int GT>
void attend_tile(const float* q, int D, float scale, const char* krows, size_t k_nb1, const char* vrows,
                 size_t v_nb1, int n, const int* n_valid, float* m, float* l, float* acc) {
  using Vec = typename O::Vec;
  constexpr int W = O::W;
  constexpr int UC = unroll<O, GT>();         // vectors of D per pass over the V rows
  constexpr int UT = UC < W ? UC : W;          // tokens per pass over the K rows (<= tile)

  Vec dots[GT][W];
  int t = 0;
  for (; t + UT <= n; t += UT) dot_tokens<O, GT, UT>(q, D, krows, k_nb1, t, dots);
  for (; t < n; ++t) dot_tokens<O, GT, 1>(q, D, krows, k_nb1, t, dots);
  for (; t < W; ++t)
    for (int g = 0; g < GT; ++g) dots[g][t] = O::zero();

  float f[GT];
  alignas(64) float p[GT][W];
  for (int g = 0; g < GT; ++g) {
    const int ng = n_valid ? n_valid[g] : n;
    const Vec s = O::keep_first(O::mul(O::lane_sums(dots[g]), O::set1(scale)), ng, -INFINITY);
    const float mt = O::hmax(s);
    const float m_new = m[g] > mt ? m[g] : mt;
    if (m_new == -INFINITY) {  // every score -inf: nothing to add
      f[g] = 1.0f;
      O::store(p[g], O::zero());
      continue;
    }
    f[g] = m_new == m[g] ? 1.0f : expf(m[g] - m_new);  // 0 on the first tile (m = -inf)
    const Vec pv = O::keep_first(O::exp(O::sub(s, O::set1(m_new))), ng, 0.0f);
    l[g] = l[g] * f[g] + O::hsum(pv);
    m[g] = m_new;
    O::store(p[g], pv);
  }

  const int full = D - D % W;
  int c = 0;
  for (; c + UC * W <= full; c += UC * W) accumulate_values<O, GT, UC>(D, c, n, vrows, v_nb1, p, f, acc);
  for (; c < full; c += W) accumulate_values<O, GT, 1>(D, c, n, vrows, v_nb1, p, f, acc);
  if (full < D) {  // the last partial vector of D
    const int w = D - full;
    Vec a[GT];
    for (int g = 0; g < GT; ++g) a[g] = O::mul(O::load_part(acc + g * D + full, w), O::set1(f[g]));
    for (int t2 = 0; t2 < n; ++t2) {
      const Vec vf = O::load_h_part(reinterpret_cast<const uint16_t*>(vrows + t2 * v_nb1) + full, w);
      for (int g = 0; g < GT; ++g) a[g] = O::fma(O::set1(p[g][t2]), vf, a[g]);
    }
    for (int g = 0; g < GT; ++g) O::store_part(acc + g * D + full, a[g], w);
  }
}

using TileFn = void (*)(const float*, int, float, const char*, size_t, const char*, size_t, int, const int*, float*,
                        float*, float*);

template <class O>
TileFn tile_fn(int gt) {
  switch (gt) {
    case 1: return &attend_tile<O, 1>;
    case 2: return &attend_tile<O, 2>;
    case 3: return &attend_tile<O, 3>;
    case 4: return &attend_tile<O, 4>;
    case 5: return &attend_tile<O, 5>;
    case 6: return &attend_tile<O, 6>;
    case 7: return &attend_tile<O, 7>;
    default: return &attend_tile<O, 8>;
  }
}

template <class O>
void sparse_attention_item_impl(const SparseAttentionItem& it) {
  constexpr int W = O::W;
  constexpr int kMaxHeadsPerPass = 8;
  const int G = it.group, D = it.D;
  for (int g = 0; g < G; ++g) {
    it.m[g] = -INFINITY;
    it.l[g] = 0.0f;
  }
  for (int64_t i = 0; i < static_cast<int64_t>(G) * D; ++i) it.acc[i] = 0.0f;

  // Heads in passes of at most 8, sized evenly (9 heads: 5 + 4).
  const int n_pass = (G + kMaxHeadsPerPass - 1) / kMaxHeadsPerPass;

  for (int64_t i = 0; i < it.n_blocks;) {
    // A span: consecutive selected blocks, clipped to the unmasked keys.
    const int64_t b0 = it.blocks[i++];
    if (b0 < 0) continue;
    int64_t b1 = b0 + 1;
    while (i < it.n_blocks && it.blocks[i] == b1) {
      ++b1;
      ++i;
    }
    const int64_t t0 = b0 * it.block_size;
    int64_t t1 = b1 * it.block_size;
    if (t1 > it.n_kv) t1 = it.n_kv;
    for (int64_t t = t0; t < t1; t += W) {
      const int n = t1 - t < W ? static_cast<int>(t1 - t) : W;
      const char* kr = it.K + t * it.k_nb1;
      const char* vr = it.V + t * it.v_nb1;
      for (int k = 0, g0 = 0; k < n_pass; ++k) {
        const int size = G / n_pass + (k < G % n_pass ? 1 : 0);
        tile_fn<O>(size)(it.q + static_cast<int64_t>(g0) * D, D, it.scale, kr, it.k_nb1, vr, it.v_nb1, n, nullptr, it.m + g0,
                         it.l + g0, it.acc + static_cast<int64_t>(g0) * D);
        g0 += size;
      }
    }
  }
}


// Dense causal attention of consecutive queries over one KV head (prefill, rectification). Row
// r is query r / group's head r % group; query i sees keys [0, pos0 + i]. Each K/V tile is read
// from memory once for all rows (then from L1, per pass of at most 6 rows). Every row visits the
// same tiles in the same order as sparse_attention_item_impl over all blocks (one span from key
// 0), with the same per-row arithmetic; keys a row may not see add exact zeros. So a prefill
// query's numbers equal those of a decode step at its position.
template <class O>
void causal_attention_item_impl(const CausalAttentionItem& it) {
  constexpr int W = O::W;
  // 6 rows per pass: unroll<O, 6>() then interleaves 4 tokens (24 accumulators), the most FMA
  // chains per widened K row that fit the registers. Measured on AVX-512 (33 queries x 3 heads,
  // 7,000 keys): 8 rows per pass 30 % slower (3 tokens interleaved, spills), 3 rows 12 % slower.
  constexpr int kMaxRowsPerPass = 6;
  const int G = it.group, D = it.D;
  const int R = it.n_queries * G;
  for (int r = 0; r < R; ++r) {
    it.m[r] = -INFINITY;
    it.l[r] = 0.0f;
  }
  for (int64_t i = 0; i < static_cast<int64_t>(R) * D; ++i) it.acc[i] = 0.0f;

  const int64_t n_kv_end = it.pos0 + it.n_queries;  // keys the last query sees
  int n_valid[kMaxRowsPerPass];
  for (int64_t t = 0; t < n_kv_end; t += W) {
    const int n = n_kv_end - t < W ? static_cast<int>(n_kv_end - t) : W;
    // Query i sees key t iff pos0 + i >= t: the rows before that see nothing of this tile.
    const int64_t first_query = t - it.pos0 > 0 ? t - it.pos0 : 0;
    const int r0 = static_cast<int>(first_query) * G;
    const int rows = R - r0;
    const int n_pass = (rows + kMaxRowsPerPass - 1) / kMaxRowsPerPass;  // sized evenly, as heads are
    const char* kr = it.K + t * it.k_nb1;
    const char* vr = it.V + t * it.v_nb1;
    for (int k = 0, g0 = r0; k < n_pass; ++k) {
      const int size = rows / n_pass + (k < rows % n_pass ? 1 : 0);
      for (int j = 0; j < size; ++j) {
        const int64_t visible = it.pos0 + (g0 + j) / G + 1 - t;  // keys of this tile the row sees
        n_valid[j] = visible < n ? static_cast<int>(visible) : n;
      }
      // Rows are in query order: the pass's last row sees the most keys, so read only those.
      tile_fn<O>(size)(it.q + static_cast<int64_t>(g0) * D, D, it.scale, kr, it.k_nb1, vr, it.v_nb1,
                       n_valid[size - 1], n_valid, it.m + g0, it.l + g0, it.acc + static_cast<int64_t>(g0) * D);
      g0 += size;
    }
  }
}

}  // namespace
}  // namespace pyresa::cpu
