// The KV cache: F16, per layer and KV head one token-major region of `capacity` tokens, so
// the keys of a block of consecutive tokens are one contiguous span (block-sparse attention
// reads the cache by blocks). Memory is reserved up front but only touched as it fills.
#pragma once
#include <cstddef>
#include <memory>

#include "formats/ggml_types.h"

namespace pyresa {

class KvCache {
 public:
  KvCache(int n_layer, int n_kv_heads, int head_dim, int capacity);

  int capacity() const { return capacity_; }
  size_t bytes() const { return 2 * elements_ * sizeof(fp16_t); }

  // Writes one token's keys and values (all KV heads, [n_kv_heads][head_dim] floats) at pos.
  void store(int layer, int pos, const float* k, const float* v);

  fp16_t* k(int layer, int head) { return k_.get() + offset(layer, head); }
  fp16_t* v(int layer, int head) { return v_.get() + offset(layer, head); }
  const fp16_t* k(int layer, int head) const { return k_.get() + offset(layer, head); }
  const fp16_t* v(int layer, int head) const { return v_.get() + offset(layer, head); }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  size_t head_stride() const { return static_cast<size_t>(capacity_) * head_dim_; }

 private:
  size_t offset(int layer, int head) const {
    return (static_cast<size_t>(layer) * n_kv_heads_ + head) * head_stride();
  }
  int n_layer_, n_kv_heads_, head_dim_, capacity_;
  size_t elements_;
  std::unique_ptr<fp16_t[]> k_, v_;
};

}  // namespace pyresa
