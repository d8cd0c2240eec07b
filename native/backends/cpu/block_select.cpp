#include "backends/cpu/block_select.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

namespace pyresa::cpu {

namespace {

// Upper bound of qp·k over the block's keys. Eight lane-wise partial sums in a fixed order, so
// the result is deterministic and the compiler vectorizes it without reassociating floats.
inline float block_score(const float* qp, const float* kmin, const float* kmax, int D) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= D; j += 8) {
    for (int l = 0; l < 8; ++l) {
      const float a = qp[j + l] * kmax[j + l];
      const float b = qp[j + l] * kmin[j + l];
      acc[l] += a > b ? a : b;
    }
  }
  for (; j < D; ++j) {
    const float a = qp[j] * kmax[j];
    const float b = qp[j] * kmin[j];
    acc[j & 7] += a > b ? a : b;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// A score and its block index packed so that a larger key is a better block: scores in
// total order (NaN ranked as -inf), ties to the lower index.
inline uint64_t rank_key(float score, uint32_t index) {
  if (std::isnan(score)) score = -INFINITY;
  uint32_t bits;
  std::memcpy(&bits, &score, 4);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(~index);
}

inline uint32_t key_index(uint64_t key) { return ~static_cast<uint32_t>(key); }

}  // namespace

int64_t resa_block_count(int64_t n_tokens, int block_size) {
  if (block_size <= 0) throw std::invalid_argument("block_size must be positive");
  if (n_tokens <= 0) return 0;
  return (n_tokens + block_size - 1) / block_size;
}

int64_t resa_select_count(int64_t n_tokens, const ResaSelectParams& p) {
  const int64_t n_blocks = resa_block_count(n_tokens, p.block_size);
  if (n_blocks == 0) return 0;
  if (!(p.ratio >= 0.0)) throw std::invalid_argument("ratio must be >= 0");
  if (p.min_blocks < 0 || p.local_blocks < 0) throw std::invalid_argument("min_blocks and local_blocks must be >= 0");
  const double by_ratio = std::ceil(p.ratio * static_cast<double>(n_blocks));
  int64_t n_sel = by_ratio >= static_cast<double>(n_blocks) ? n_blocks : static_cast<int64_t>(by_ratio);
  n_sel = std::max(n_sel, std::min<int64_t>(n_blocks, p.min_blocks));
  n_sel = std::max(n_sel, std::min<int64_t>(n_blocks, p.local_blocks));
  return n_sel;
}

int64_t select_blocks(const float* q, int n_q_heads, int n_kv_heads, int D, const BlockDescriptorView& desc,
                      int64_t n_tokens, const ResaSelectParams& p, int32_t* out, int ith, int nth) {
  if (n_kv_heads <= 0 || n_q_heads % n_kv_heads != 0)
    throw std::invalid_argument("select_blocks: n_q_heads must be a positive multiple of n_kv_heads");
  const int64_t n_blocks = resa_block_count(n_tokens, p.block_size);
  const int64_t n_sel = resa_select_count(n_tokens, p);
  if (n_sel == 0) return 0;
  const int group = n_q_heads / n_kv_heads;
  const int64_t n_local = std::min<int64_t>(p.local_blocks, n_blocks);
  const int64_t n_scored = n_blocks - n_local;  // candidates that compete on score
  const int64_t n_pick = n_sel - n_local;       // how many of them are taken

  thread_local std::vector<uint64_t> keys;
  thread_local std::vector<float> qp;
  if (n_pick > 0 && n_pick < n_scored && static_cast<int64_t>(keys.size()) < n_scored) keys.resize(n_scored);
  if (static_cast<int>(qp.size()) < D) qp.resize(D);

  for (int h = ith; h < n_kv_heads; h += nth) {
    int32_t* row = out + static_cast<int64_t>(h) * n_sel;
    int64_t n_out = 0;
    if (n_pick >= n_scored) {  // every block is taken: no scoring
      for (int64_t b = 0; b < n_scored; ++b) row[n_out++] = static_cast<int32_t>(b);
    } else if (n_pick > 0) {
      // Pooled query: mean over the group's query heads.
      const float* qg = q + static_cast<int64_t>(h) * group * D;
      for (int j = 0; j < D; ++j) {
        float s = 0.0f;
        for (int g = 0; g < group; ++g) s += qg[static_cast<int64_t>(g) * D + j];
        qp[j] = s / static_cast<float>(group);
      }
      const float* kmin = desc.kmin + h * desc.head_stride;
      const float* kmax = desc.kmax + h * desc.head_stride;
      for (int64_t b = 0; b < n_scored; ++b)
        keys[b] = rank_key(block_score(qp.data(), kmin + b * desc.block_stride, kmax + b * desc.block_stride, D),
                           static_cast<uint32_t>(b));
      std::nth_element(keys.begin(), keys.begin() + (n_pick - 1), keys.begin() + n_scored, std::greater<uint64_t>());
      for (int64_t i = 0; i < n_pick; ++i) row[n_out++] = static_cast<int32_t>(key_index(keys[i]));
      std::sort(row, row + n_out);
    }
    for (int64_t b = n_scored; b < n_blocks; ++b) row[n_out++] = static_cast<int32_t>(b);  // local blocks
  }
  return n_sel;
}

}  // namespace pyresa::cpu
