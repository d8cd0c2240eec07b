#include "backends/cpu/attention_mass.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "formats/fp16.h"

namespace pyresa::cpu {

void block_attention_mass(const float* q, int group, int D, const fp16_t* K, size_t k_nb1, int64_t n_tokens,
                          int block_size, float scale, double* mass) {
  const int64_t n_blocks = (n_tokens + block_size - 1) / block_size;
  std::fill(mass, mass + n_blocks, 0.0);
  if (n_tokens <= 0) return;
  thread_local std::vector<float> scores;
  thread_local std::vector<float> key;
  scores.resize(static_cast<size_t>(group) * n_tokens);
  key.resize(D);
  // Keys widened once and scored against every head of the group.
  for (int64_t t = 0; t < n_tokens; ++t) {
    const fp16_t* k = reinterpret_cast<const fp16_t*>(reinterpret_cast<const char*>(K) + t * k_nb1);
    for (int j = 0; j < D; ++j) key[j] = fp16_to_fp32(k[j]);
    for (int g = 0; g < group; ++g) {
      const float* qg = q + static_cast<size_t>(g) * D;
      float s = 0.0f;
      for (int j = 0; j < D; ++j) s += qg[j] * key[j];
      scores[static_cast<size_t>(g) * n_tokens + t] = scale * s;
    }
  }
  // exp in float (relative error ~1e-7, far below what the audit resolves), sums in double.
  for (int g = 0; g < group; ++g) {
    float* s = scores.data() + static_cast<size_t>(g) * n_tokens;
    const float m = *std::max_element(s, s + n_tokens);
    double l = 0.0;
    for (int64_t t = 0; t < n_tokens; ++t) {
      s[t] = std::exp(s[t] - m);
      l += s[t];
    }
    const double w = 1.0 / (l * group);
    for (int64_t t = 0; t < n_tokens; ++t) mass[t / block_size] += s[t] * w;
  }
}

void select_blocks_by_mass(const double* mass, int64_t n_blocks, int64_t n_sel, int64_t n_local, int32_t* row) {
  n_sel = std::min(n_sel, n_blocks);
  n_local = std::min(n_local, n_sel);
  const int64_t n_scored = n_blocks - n_local;
  const int64_t n_pick = n_sel - n_local;
  thread_local std::vector<int32_t> order;
  order.resize(n_scored);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n_pick, order.end(), [&](int32_t a, int32_t b) {
    return mass[a] != mass[b] ? mass[a] > mass[b] : a < b;
  });
  std::copy(order.begin(), order.begin() + n_pick, row);
  std::sort(row, row + n_pick);
  for (int64_t i = 0; i < n_local; ++i) row[n_pick + i] = static_cast<int32_t>(n_scored + i);
}

double selected_mass(const double* mass, const int32_t* row, int64_t n_sel) {
  double s = 0.0;
  for (int64_t i = 0; i < n_sel; ++i) s += mass[row[i]];
  return s;
}

}  // namespace pyresa::cpu
