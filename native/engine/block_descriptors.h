// Block descriptors for ReSA's block selection: per layer, KV head and block of `block_size`
// consecutive tokens, the element-wise min and max of the block's post-RoPE keys.
// q·k over any key of the block is then bounded by Σ_j max(q_j·kmax_j, q_j·kmin_j), the score
// select_blocks ranks blocks by.
//
// Storage is F32, [layer][kv_head][block][2][D]: a block's kmin row is followed by its kmax row,
// so scoring one block reads one contiguous 2·D span.
//
// Keys enter as the F16 values the KV cache holds (append() rounds its F32 input to F16 first),
// so descriptors built token by token with append() equal those rebuilt with refresh() from
// the cache, bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "formats/ggml_types.h"

namespace pyresa {

// One layer's descriptors as seen by select_blocks: kmin/kmax of (kv head h, block b) start at
// kmin + h*head_stride + b*block_stride (likewise kmax); strides count floats.
struct BlockDescriptorView {
  const float* kmin = nullptr;
  const float* kmax = nullptr;
  int64_t block_stride = 0;
  int64_t head_stride = 0;
};

class BlockDescriptors {
 public:
  BlockDescriptors() = default;
  BlockDescriptors(int n_layer, int n_kv_heads, int head_dim, int max_blocks, int block_size);

  // Recompute every block touched by tokens [first_token, first_token + n_tokens) from the
  // cache K of `layer`: element (kv head h, token t, dim d) at (char*)K + h*nb2 + t*nb1 + 2*d.
  // Each block's min/max covers its tokens below n_valid only; a block with no valid token is
  // reset to zeros. Used after prefill chunks and rectification.
  void refresh(int layer, int64_t first_token, int64_t n_tokens, const fp16_t* K, size_t nb1, size_t nb2,
               int64_t n_valid);

  // Fold token `token`'s keys (k_new: [n_kv_heads][D], post-RoPE, F32) into its block's running
  // min/max; token % block_size == 0 starts the block afresh. Tokens of a block are appended in
  // order (the decode step's new token).
  void append(int layer, int64_t token, const float* k_new);

  // kmin row of (layer, kv_head, block); its kmax row follows at +head_dim.
  const float* kmin(int layer, int kv_head, int block) const { return data_.data() + offset(layer, kv_head, block); }
  const float* kmax(int layer, int kv_head, int block) const { return kmin(layer, kv_head, block) + head_dim_; }
  float* kmin(int layer, int kv_head, int block) { return data_.data() + offset(layer, kv_head, block); }
  float* kmax(int layer, int kv_head, int block) { return kmin(layer, kv_head, block) + head_dim_; }

  // The layout select_blocks takes, for one layer.
  BlockDescriptorView layer_view(int layer) const;

  int n_layer() const { return n_layer_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  int max_blocks() const { return max_blocks_; }
  int block_size() const { return block_size_; }
  size_t bytes() const { return data_.size() * sizeof(float); }

 private:
  size_t offset(int layer, int kv_head, int block) const {
    return ((static_cast<size_t>(layer) * n_kv_heads_ + kv_head) * max_blocks_ + block) * 2 * head_dim_;
  }
  void check_layer(int layer) const;

  int n_layer_ = 0, n_kv_heads_ = 0, head_dim_ = 0, max_blocks_ = 0, block_size_ = 0;
  std::vector<float> data_;
};

}  // namespace pyresa
