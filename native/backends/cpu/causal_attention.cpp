// Driver of the causal chunk attention op: query tiles, ISA dispatch, gathering each item's q
// rows and normalizing its results into out. The arithmetic lives in sparse_attention_kernel.h.
#include "backends/cpu/causal_attention.h"

#include <cstring>
#include <stdexcept>
#include <vector>

#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace {

// Rows (query x query head) per item: enough that a K/V tile, read once from memory, is scored
// against many rows; few enough that the item's q and accumulators (2 x 48 x D floats: 24 KiB at
// D = 64) stay in L1 beside the K/V tile.
constexpr int kRowsPerItem = 48;

// Items per thread to aim for, so a thread slowed by another tenant does not hold the rest up.
constexpr int kItemsPerThread = 4;

CausalAttentionKernel active_kernel() {
  const char* isa = cpu_kernels().isa;
  if (std::strcmp(isa, "avx512") == 0) return &avx512::causal_attention_item;
  if (std::strcmp(isa, "avx2") == 0) return &avx2::causal_attention_item;
  return &scalar::causal_attention_item;
}

void check(const CausalAttentionArgs& a) {
  if (a.n_kv_heads <= 0 || a.n_q_heads <= 0 || a.n_q_heads % a.n_kv_heads != 0)
    throw std::invalid_argument("causal_attention: n_q_heads must be a positive multiple of n_kv_heads");
  if (a.D <= 0 || a.n_queries < 0 || a.pos0 < 0)
    throw std::invalid_argument("causal_attention: D must be positive, n_queries and pos0 >= 0");
}

}  // namespace

CausalAttentionPlan causal_attention_plan(const CausalAttentionArgs& a, int nth) {
  check(a);
  CausalAttentionPlan p;
  if (a.n_queries == 0) return p;
  const int group = a.n_q_heads / a.n_kv_heads;
  const int max_queries = kRowsPerItem / group > 0 ? kRowsPerItem / group : 1;
  int tiles = (a.n_queries + max_queries - 1) / max_queries;
  // More, smaller tiles when there are too few items for the threads, and a count of items that
  // divides evenly among them when the queries allow (equal-sized items finish together).
  while (tiles < a.n_queries && static_cast<int64_t>(a.n_kv_heads) * tiles < static_cast<int64_t>(kItemsPerThread) * nth)
    ++tiles;
  for (int t = tiles; t <= a.n_queries && t < 2 * tiles; ++t)
    if ((static_cast<int64_t>(a.n_kv_heads) * t) % (nth > 0 ? nth : 1) == 0) {
      tiles = t;
      break;
    }
  p.n_tiles = tiles;
  p.n_items = static_cast<int64_t>(a.n_kv_heads) * tiles;
  return p;
}

void causal_attention_item(const CausalAttentionArgs& a, const CausalAttentionPlan& plan, int64_t item) {
  const int group = a.n_q_heads / a.n_kv_heads;
  const int D = a.D;
  // The last tiles (most keys, in a causal chunk) first: the long items start early, the short
  // ones fill in at the end.
  const int tile = plan.n_tiles - 1 - static_cast<int>(item / a.n_kv_heads);
  const int h = static_cast<int>(item % a.n_kv_heads);
  const int i0 = static_cast<int>(static_cast<int64_t>(a.n_queries) * tile / plan.n_tiles);
  const int i1 = static_cast<int>(static_cast<int64_t>(a.n_queries) * (tile + 1) / plan.n_tiles);
  const int rows = (i1 - i0) * group;
  if (rows == 0) return;

  // The kernel wants the item's rows contiguous: the group's heads of each query, query after query.
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(rows) * (2 * D + 2);
  if (buf.size() < need) buf.resize(need);
  float* q = buf.data();
  float* acc = q + static_cast<size_t>(rows) * D;
  float* m = acc + static_cast<size_t>(rows) * D;
  float* l = m + rows;
  const size_t q_stride = static_cast<size_t>(a.n_q_heads) * D;  // floats between queries
  const size_t head0 = static_cast<size_t>(h) * group * D;
  for (int i = i0; i < i1; ++i)
    std::memcpy(q + static_cast<size_t>(i - i0) * group * D, a.q + i * q_stride + head0, sizeof(float) * group * D);

  CausalAttentionItem it;
  it.q = q;
  it.n_queries = i1 - i0;
  it.group = group;
  it.D = D;
  it.K = reinterpret_cast<const char*>(a.K) + h * a.k_nb2;
  it.k_nb1 = a.k_nb1;
  it.V = reinterpret_cast<const char*>(a.V) + h * a.v_nb2;
  it.v_nb1 = a.v_nb1;
  it.pos0 = a.pos0 + i0;
  it.scale = a.scale;
  it.m = m;
  it.l = l;
  it.acc = acc;
  active_kernel()(it);

  for (int r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    const float* src = acc + static_cast<size_t>(r) * D;
    float* dst = a.out + (i0 + r / group) * q_stride + head0 + static_cast<size_t>(r % group) * D;
    for (int d = 0; d < D; ++d) dst[d] = src[d] * inv;
  }
}

void causal_attention(const CausalAttentionArgs& a, int nth) {
  const CausalAttentionPlan plan = causal_attention_plan(a, nth);
  for (int64_t item = 0; item < plan.n_items; ++item) causal_attention_item(a, plan, item);
}

}  // namespace pyresa::cpu
