#include "engine/kv_cache.h"

#include "backends/cpu/cpu_kernels.h"

namespace pyresa {

KvCache::KvCache(int n_layer, int n_kv_heads, int head_dim, int capacity)
    : n_layer_(n_layer), n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity),
      elements_(static_cast<size_t>(n_layer) * n_kv_heads * capacity * head_dim),
      // new T[] without () leaves the pages untouched until written: a 128K-token reservation
      // costs nothing until the context fills.
      k_(new fp16_t[elements_]), v_(new fp16_t[elements_]) {}

void KvCache::store(int layer, int pos, const float* k, const float* v) {
  const auto to_half = cpu::cpu_kernels().fp32_to_fp16_row;
  for (int h = 0; h < n_kv_heads_; ++h) {
    to_half(k + h * head_dim_, this->k(layer, h) + static_cast<size_t>(pos) * head_dim_, head_dim_);
    to_half(v + h * head_dim_, this->v(layer, h) + static_cast<size_t>(pos) * head_dim_, head_dim_);
  }
}

}  // namespace pyresa
