// Driver of the sparse attention op: work split, ISA dispatch, normalization and the
// log-sum-exp combine of chunks. The arithmetic lives in sparse_attention_kernel.h.
#include "backends/cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace {

// A chunk below this many blocks is not worth a partial result and a combine.
constexpr int64_t kMinChunkBlocks = 4;

int gcd(int a, int b) {
  while (b) {
    const int t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Chunks per head that make the work items (KV head, chunk) divide evenly among nth threads.
int even_chunks(int n_kv_heads, int nth) { return nth <= 1 ? 1 : nth / gcd(n_kv_heads, nth); }

SparseAttentionKernel active_kernel() {
  const char* isa = cpu_kernels().isa;
  if (std::strcmp(isa, "avx512") == 0) return &avx512::sparse_attention_item;
  if (std::strcmp(isa, "avx2") == 0) return &avx2::sparse_attention_item;
  return &scalar::sparse_attention_item;
}

void check(const SparseAttentionArgs& a) {
  if (a.n_kv_heads <= 0 || a.n_q_heads <= 0 || a.n_q_heads % a.n_kv_heads != 0)
    throw std::invalid_argument("sparse_attention: n_q_heads must be a positive multiple of n_kv_heads");
  if (a.D <= 0 || a.block_size <= 0 || a.n_sel < 0 || a.n_kv < 0)
    throw std::invalid_argument("sparse_attention: D and block_size must be positive, n_sel and n_kv >= 0");
}

// Per work item in the workspace: m[group], l[group], acc[group][D].
size_t item_floats(int group, int D) { return static_cast<size_t>(group) * (D + 2); }

}  // namespace

int sparse_attention_chunks(int n_kv_heads, int64_t n_sel, int nth) {
  int64_t c = even_chunks(n_kv_heads, nth);
  const int64_t cap = n_sel / kMinChunkBlocks;
  if (c > cap) c = cap;
  return c < 1 ? 1 : static_cast<int>(c);
}

size_t sparse_attention_workspace_floats(int n_q_heads, int n_kv_heads, int D, int nth) {
  const int c = even_chunks(n_kv_heads, nth);
  if (c <= 1) return 0;
  return static_cast<size_t>(n_kv_heads) * c * item_floats(n_q_heads / n_kv_heads, D);
}

void sparse_attention_compute(const SparseAttentionArgs& a, int ith, int nth, float* ws) {
  check(a);
  const int group = a.n_q_heads / a.n_kv_heads;
  const int D = a.D;
  const int chunks = sparse_attention_chunks(a.n_kv_heads, a.n_sel, nth);
  const int64_t n_items = static_cast<int64_t>(a.n_kv_heads) * chunks;
  const int64_t first = n_items * ith / nth, last = n_items * (ith + 1) / nth;
  const SparseAttentionKernel kernel = active_kernel();
  thread_local std::vector<float> ml;
  if (chunks == 1 && ml.size() < 2 * static_cast<size_t>(group)) ml.resize(2 * static_cast<size_t>(group));

  for (int64_t item = first; item < last; ++item) {
    const int h = static_cast<int>(item / chunks);
    const int64_t k = item % chunks;
    const int64_t s0 = a.n_sel * k / chunks, s1 = a.n_sel * (k + 1) / chunks;
    SparseAttentionItem it;
    it.q = a.q + static_cast<int64_t>(h) * group * D;
    it.group = group;
    it.D = D;
    it.K = reinterpret_cast<const char*>(a.K) + h * a.k_nb2;
    it.k_nb1 = a.k_nb1;
    it.V = reinterpret_cast<const char*>(a.V) + h * a.v_nb2;
    it.v_nb1 = a.v_nb1;
    it.blocks = a.blocks + h * a.n_sel + s0;
    it.n_blocks = s1 - s0;
    it.block_size = a.block_size;
    it.n_kv = a.n_kv;
    it.scale = a.scale;
    if (chunks == 1) {  // the whole head: accumulate into out and normalize in place
      it.m = ml.data();
      it.l = ml.data() + group;
      it.acc = a.out + static_cast<int64_t>(h) * group * D;
      kernel(it);
      for (int g = 0; g < group; ++g) {
        const float inv = it.l[g] > 0.0f ? 1.0f / it.l[g] : 0.0f;
        float* row = it.acc + static_cast<int64_t>(g) * D;
        for (int d = 0; d < D; ++d) row[d] *= inv;
      }
    } else {
      float* slot = ws + item * item_floats(group, D);
      it.m = slot;
      it.l = slot + group;
      it.acc = slot + 2 * group;
      kernel(it);
    }
  }
}

void sparse_attention_reduce(const SparseAttentionArgs& a, int ith, int nth, const float* ws) {
  const int chunks = sparse_attention_chunks(a.n_kv_heads, a.n_sel, nth);
  if (chunks == 1) return;
  const int group = a.n_q_heads / a.n_kv_heads;
  const int D = a.D;
  const size_t stride = item_floats(group, D);
  const int first = a.n_q_heads * ith / nth, last = a.n_q_heads * (ith + 1) / nth;
  for (int qh = first; qh < last; ++qh) {
    const int h = qh / group, g = qh % group;
    const float* slot0 = ws + static_cast<size_t>(h) * chunks * stride;
    float M = -INFINITY;
    for (int k = 0; k < chunks; ++k) M = std::fmax(M, slot0[k * stride + g]);
    float* out = a.out + static_cast<int64_t>(qh) * D;
    for (int d = 0; d < D; ++d) out[d] = 0.0f;
    if (M == -INFINITY) continue;
    float L = 0.0f;
    for (int k = 0; k < chunks; ++k) {
      const float* slot = slot0 + k * stride;
      if (slot[g] == -INFINITY) continue;
      const float w = std::exp(slot[g] - M);
      L += w * slot[group + g];
      const float* acc = slot + 2 * group + static_cast<size_t>(g) * D;
      for (int d = 0; d < D; ++d) out[d] += w * acc[d];
    }
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = 0; d < D; ++d) out[d] *= inv;
  }
}

void sparse_attention_heads(const SparseAttentionArgs& a, int q_begin, int q_end) {
  check(a);
  const int group = a.n_q_heads / a.n_kv_heads;
  const int D = a.D;
  const SparseAttentionKernel kernel = active_kernel();
  thread_local std::vector<float> ml;
  if (ml.size() < 2 * static_cast<size_t>(group)) ml.resize(2 * static_cast<size_t>(group));
  for (int qh = q_begin; qh < q_end;) {
    const int h = qh / group;
    const int g_end = std::min(q_end, (h + 1) * group);  // this KV head's heads in the range
    SparseAttentionItem it;
    it.q = a.q + static_cast<int64_t>(qh) * D;
    it.group = g_end - qh;
    it.D = D;
    it.K = reinterpret_cast<const char*>(a.K) + h * a.k_nb2;
    it.k_nb1 = a.k_nb1;
    it.V = reinterpret_cast<const char*>(a.V) + h * a.v_nb2;
    it.v_nb1 = a.v_nb1;
    it.blocks = a.blocks + h * (a.blocks_stride < 0 ? a.n_sel : a.blocks_stride);
    it.n_blocks = a.n_sel;
    it.block_size = a.block_size;
    it.n_kv = a.n_kv;
    it.scale = a.scale;
    it.m = ml.data();
    it.l = ml.data() + group;
    it.acc = a.out + static_cast<int64_t>(qh) * D;
    kernel(it);
    for (int g = 0; g < it.group; ++g) {
      const float inv = it.l[g] > 0.0f ? 1.0f / it.l[g] : 0.0f;
      float* row = it.acc + static_cast<int64_t>(g) * D;
      for (int d = 0; d < D; ++d) row[d] *= inv;
    }
    qh = g_end;
  }
}

void sparse_attention(const SparseAttentionArgs& a) {
  sparse_attention_compute(a, 0, 1, nullptr);
}

}  // namespace pyresa::cpu
