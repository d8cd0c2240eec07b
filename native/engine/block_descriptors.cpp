#include "engine/block_descriptors.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "formats/fp16.h"

namespace pyresa {

namespace {

// Half floats compare like these signed 16-bit keys (sign-magnitude flipped to two's complement
// order; -0 sorts just below +0), so a block's min/max is taken on the raw F16 bits with integer
// min/max, which vectorizes on baseline x86-64, and only the result is converted. The map is its
// own inverse. NaN keys sort past ±inf; keys in a KV cache are finite.
inline int16_t order_key(uint16_t h) {
  const int16_t s = static_cast<int16_t>(h);
  return static_cast<int16_t>(s ^ ((s >> 15) & 0x7fff));
}

}  // namespace

BlockDescriptors::BlockDescriptors(int n_layer, int n_kv_heads, int head_dim, int max_blocks, int block_size)
    : n_layer_(n_layer), n_kv_heads_(n_kv_heads), head_dim_(head_dim), max_blocks_(max_blocks), block_size_(block_size) {
  if (n_layer <= 0 || n_kv_heads <= 0 || head_dim <= 0 || max_blocks <= 0 || block_size <= 0)
    throw std::invalid_argument("BlockDescriptors: every dimension must be positive");
  data_.assign(static_cast<size_t>(n_layer) * n_kv_heads * max_blocks * 2 * head_dim, 0.0f);
}

void BlockDescriptors::check_layer(int layer) const {
  if (layer < 0 || layer >= n_layer_)
    throw std::out_of_range("BlockDescriptors: layer " + std::to_string(layer) + " out of range");
}

BlockDescriptorView BlockDescriptors::layer_view(int layer) const {
  check_layer(layer);
  BlockDescriptorView v;
  v.kmin = kmin(layer, 0, 0);
  v.kmax = kmax(layer, 0, 0);
  v.block_stride = 2 * static_cast<int64_t>(head_dim_);
  v.head_stride = v.block_stride * max_blocks_;
  return v;
}

void BlockDescriptors::refresh(int layer, int64_t first_token, int64_t n_tokens, const fp16_t* K, size_t nb1,
                               size_t nb2, int64_t n_valid) {
  check_layer(layer);
  if (n_tokens <= 0) return;
  if (first_token < 0) throw std::out_of_range("BlockDescriptors::refresh: negative first_token");
  const int64_t b0 = first_token / block_size_;
  const int64_t b1 = (first_token + n_tokens - 1) / block_size_;
  if (b1 >= max_blocks_)
    throw std::out_of_range("BlockDescriptors::refresh: block " + std::to_string(b1) + " past max_blocks " +
                            std::to_string(max_blocks_));
  const int D = head_dim_;
  std::vector<int16_t> lo(D), hi(D);
  const char* base = reinterpret_cast<const char*>(K);
  for (int h = 0; h < n_kv_heads_; ++h) {
    for (int64_t b = b0; b <= b1; ++b) {
      float* mn = kmin(layer, h, static_cast<int>(b));
      float* mx = mn + D;
      const int64_t t0 = b * block_size_;
      const int64_t t1 = std::min<int64_t>(t0 + block_size_, n_valid);
      if (t1 <= t0) {
        std::fill(mn, mn + 2 * D, 0.0f);
        continue;
      }
      std::fill(lo.begin(), lo.end(), INT16_MAX);
      std::fill(hi.begin(), hi.end(), INT16_MIN);
      for (int64_t t = t0; t < t1; ++t) {
        const uint16_t* row = reinterpret_cast<const uint16_t*>(base + h * nb2 + t * nb1);
        for (int d = 0; d < D; ++d) {
          const int16_t k = order_key(row[d]);
          lo[d] = std::min(lo[d], k);
          hi[d] = std::max(hi[d], k);
        }
      }
      for (int d = 0; d < D; ++d) {
        mn[d] = fp16_to_fp32(static_cast<uint16_t>(order_key(static_cast<uint16_t>(lo[d]))));
        mx[d] = fp16_to_fp32(static_cast<uint16_t>(order_key(static_cast<uint16_t>(hi[d]))));
      }
    }
  }
}

void BlockDescriptors::append(int layer, int64_t token, const float* k_new) {
  check_layer(layer);
  if (token < 0) throw std::out_of_range("BlockDescriptors::append: negative token");
  const int64_t b = token / block_size_;
  if (b >= max_blocks_)
    throw std::out_of_range("BlockDescriptors::append: block " + std::to_string(b) + " past max_blocks " +
                            std::to_string(max_blocks_));
  const bool fresh = token % block_size_ == 0;
  const int D = head_dim_;
  for (int h = 0; h < n_kv_heads_; ++h) {
    float* mn = kmin(layer, h, static_cast<int>(b));
    float* mx = mn + D;
    const float* k = k_new + static_cast<size_t>(h) * D;
    for (int d = 0; d < D; ++d) {
      const float v = fp16_to_fp32(fp32_to_fp16(k[d]));  // the value the cache stores
      mn[d] = fresh ? v : std::min(mn[d], v);
      mx[d] = fresh ? v : std::max(mx[d], v);
    }
  }
}

}  // namespace pyresa
