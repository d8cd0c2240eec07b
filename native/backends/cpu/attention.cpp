#include "backends/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace {
constexpr int kMinKeysPerSplit = 256;  // below this, splitting a decode over threads does not pay
}  // namespace

void attend_key_range(const float* q, int n_group, const KvLayerView& kv, int kv_head, int t0, int t1,
                      float scale, SoftmaxState* state, float* acc) {
  cpu_kernels().attend_key_range(q, n_group, kv, kv_head, t0, t1, scale, state, acc);
}

void merge_softmax(SoftmaxState& a, float* acc_a, const SoftmaxState& b, const float* acc_b, int head_dim) {
  if (b.sum == 0.0f) return;
  const float m = std::max(a.max, b.max);
  const float ca = a.sum == 0.0f ? 0.0f : std::exp(a.max - m);
  const float cb = std::exp(b.max - m);
  for (int i = 0; i < head_dim; ++i) acc_a[i] = acc_a[i] * ca + acc_b[i] * cb;
  a.sum = a.sum * ca + b.sum * cb;
  a.max = m;
}

void attention_dense(const float* q, int n_q, int pos0, int n_heads, const KvLayerView& kv, float scale,
                     float* out, ThreadPool& pool) {
  const int d = kv.head_dim;
  const int group = n_heads / kv.n_kv_heads;
  // A decode step (one query) has only n_kv_heads groups: split each group's keys over the
  // threads as well (flash-decoding) and merge the partial softmax states afterwards.
  const int n_keys_max = pos0 + n_q;
  int splits = 1;
  if (n_q == 1 && pool.size() > 1)
    splits = std::clamp(n_keys_max / kMinKeysPerSplit, 1, 2 * pool.size());
  const int n_items = n_q * kv.n_kv_heads * splits;

  std::vector<SoftmaxState> states(static_cast<size_t>(n_items) * group);
  std::vector<float> accs(static_cast<size_t>(n_items) * group * d);
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    for (;;) {
      const int item = next.fetch_add(1, std::memory_order_relaxed);
      if (item >= n_items) break;
      const int split = item % splits;
      const int h = (item / splits) % kv.n_kv_heads;
      const int i = item / (splits * kv.n_kv_heads);
      const int n_keys = pos0 + i + 1;
      const int per = (n_keys + splits - 1) / splits;
      const int t0 = std::min(n_keys, split * per), t1 = std::min(n_keys, t0 + per);
      SoftmaxState* st = &states[static_cast<size_t>(item) * group];
      float* acc = &accs[static_cast<size_t>(item) * group * d];
      for (int g = 0; g < group; ++g) st[g] = {-std::numeric_limits<float>::infinity(), 0.0f};
      std::fill(acc, acc + group * d, 0.0f);
      const float* qg = q + (static_cast<size_t>(i) * n_heads + h * group) * d;
      attend_key_range(qg, group, kv, h, t0, t1, scale, st, acc);
    }
  });
  // Merge the splits and normalise: out = acc / sum.
  for (int i = 0; i < n_q; ++i) {
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      const size_t first = (static_cast<size_t>(i) * kv.n_kv_heads + h) * splits;
      for (int g = 0; g < group; ++g) {
        SoftmaxState st = states[first * group + g];
        float* acc = &accs[(first * group + g) * d];
        for (int s = 1; s < splits; ++s) {
          const size_t other = (first + s) * group + g;
          merge_softmax(st, acc, states[other], &accs[other * d], d);
        }
        float* o = out + (static_cast<size_t>(i) * n_heads + h * group + g) * d;
        const float inv = st.sum > 0.0f ? 1.0f / st.sum : 0.0f;
        for (int x = 0; x < d; ++x) o[x] = acc[x] * inv;
      }
    }
  }
}

}  // namespace pyresa::cpu
