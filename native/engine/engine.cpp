#include "engine/engine.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "backends/cpu/attention_mass.h"
#include "backends/cpu/causal_attention.h"
#include "backends/cpu/ops.h"
#include "backends/cpu/sparse_attention.h"
#include "engine/errors.h"

namespace pyresa {

namespace {
int resolve_threads(int requested) { return requested > 0 ? requested : cpu::physical_core_count(); }
}  // namespace

Engine::Engine(ModelConfig config, ModelWeights weights, EngineOptions options)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      options_(options),
      pool_(resolve_threads(options.n_threads)),
      cache_(config_.n_layer, config_.n_head_kv, config_.head_dim, options.n_ctx) {
  if (options_.n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
  if (options_.n_batch <= 0) options_.n_batch = 256;
  const size_t b = options_.n_batch;
  const size_t e = config_.n_embd, qd = (size_t)config_.n_head * config_.head_dim,
               kvd = (size_t)config_.n_head_kv * config_.head_dim, ff = config_.n_ff;
  x_.resize(b * e);
  h_.resize(b * e);
  q_.resize(b * qd);
  k_.resize(b * kvd);
  v_.resize(b * kvd);
  attn_.resize(b * qd);
  gate_.resize(b * ff);
  up_.resize(b * ff);
  out_.resize(b * e);
  // Attention runs through the block-sparse operator in every mode, with every block selected
  // when dense: one code path, so sparse at ratio 1 and ReSA's rectification equal dense.
  all_blocks_.resize(options_.n_ctx);  // block ids up to n_ctx (block_size >= 1)
  for (size_t i = 0; i < all_blocks_.size(); ++i) all_blocks_[i] = static_cast<int32_t>(i);
  history_.reserve(static_cast<size_t>(options_.n_ctx));
}

void Engine::set_attention(AttentionMode mode, const ResaParams& params) {
  const auto& p = params.select;
  if (p.block_size <= 0 || !(p.ratio >= 0.0) || p.min_blocks < 0 || p.local_blocks < 0 ||
      p.local_blocks > std::max(p.min_blocks, 1) || params.rectify_every <= 0)
    throw std::invalid_argument("invalid ReSA parameters");
  if (mode != AttentionMode::Dense) {
    const bool rebuild = !descriptors_ || descriptors_->block_size() != p.block_size || mode_ == AttentionMode::Dense;
    if (rebuild) {
      const int max_blocks = (options_.n_ctx + p.block_size - 1) / p.block_size;
      descriptors_ = std::make_unique<BlockDescriptors>(config_.n_layer, config_.n_head_kv, config_.head_dim,
                                                        max_blocks, p.block_size);
      const size_t nb1 = config_.head_dim * sizeof(fp16_t), nb2 = cache_.head_stride() * sizeof(fp16_t);
      if (n_past_ > 0)
        for (int l = 0; l < config_.n_layer; ++l) descriptors_->refresh(l, 0, n_past_, cache_.k(l, 0), nb1, nb2, n_past_);
    }
  }
  if (mode != AttentionMode::Resa) n_sparse_ = 0;  // nothing will rectify them: they stay as decoded
  mode_ = mode;
  resa_ = params;
}

void Engine::truncate(int n) {
  if (n < 0 || n > n_past_)
    throw std::invalid_argument("truncate(" + std::to_string(n) + ") outside [0, " + std::to_string(n_past_) + "]");
  n_past_ = n;
  history_.resize(n);
  n_sparse_ = std::min(n_sparse_, n);
  // Descriptors of the (now partial) last block are rebuilt when tokens are appended there.
  if (descriptors_ && n > 0 && n % descriptors_->block_size() != 0) {
    const size_t nb1 = config_.head_dim * sizeof(fp16_t), nb2 = cache_.head_stride() * sizeof(fp16_t);
    for (int l = 0; l < config_.n_layer; ++l) descriptors_->refresh(l, n - 1, 1, cache_.k(l, 0), nb1, nb2, n);
  }
}

void Engine::eval(const int32_t* tokens, int n, bool all_logits, float* logits) {
  if (n <= 0) throw std::invalid_argument("eval needs at least one token");
  if (n_past_ + n > options_.n_ctx)
    throw ContextFullError("context full: " + std::to_string(n_past_) + " tokens in the cache + " +
                           std::to_string(n) + " new > n_ctx " + std::to_string(options_.n_ctx));
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= config_.n_vocab)
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " outside the vocabulary [0, " +
                                  std::to_string(config_.n_vocab) + ")");
  const bool decode = n == 1 && !all_logits;
  const bool rectify = mode_ == AttentionMode::Resa && n_sparse_ > 0 && (!decode || n_sparse_ >= resa_.rectify_every);
  if (rectify) {
    // Rectification: the pending sparse-decoded tokens run again, densely and batched, with the
    // new ones, rewriting their K/V and descriptors; the new tokens' logits come from this pass.
    const int k = n_sparse_;
    std::vector<int32_t> rerun(history_.end() - k, history_.end());
    rerun.insert(rerun.end(), tokens, tokens + n);
    truncate(n_past_ - k);
    n_sparse_ = 0;
    stats_.rectifications += 1;
    stats_.rectified_tokens += k;
    if (all_logits) {
      std::vector<float> all(static_cast<size_t>(k + n) * config_.n_vocab);
      eval_dense(rerun.data(), k + n, true, all.data());
      std::copy(all.begin() + static_cast<size_t>(k) * config_.n_vocab, all.end(), logits);
    } else {
      eval_dense(rerun.data(), k + n, false, logits);
    }
    return;
  }
  if (decode && mode_ != AttentionMode::Dense) {
    forward_chunk(tokens, 1, n_past_, logits, false, true);
    n_past_ += 1;
    history_.push_back(tokens[0]);
    if (mode_ == AttentionMode::Resa) n_sparse_ += 1;
    return;
  }
  eval_dense(tokens, n, all_logits, logits);
}

void Engine::eval_dense(const int32_t* tokens, int n, bool all_logits, float* logits) {
  const int64_t vocab = config_.n_vocab;
  for (int start = 0; start < n; start += options_.n_batch) {
    const int m = std::min(options_.n_batch, n - start);
    const bool last_chunk = start + m == n;
    float* out = nullptr;
    if (all_logits) out = logits + start * vocab;
    else if (last_chunk) out = logits;
    forward_chunk(tokens + start, m, n_past_, out, all_logits, false);
    n_past_ += m;
    history_.insert(history_.end(), tokens + start, tokens + start + m);
  }
}

void Engine::parallel_rows(int n, const std::function<void(int)>& fn) {
  if (n == 1) {
    fn(0);
    return;
  }
  pool_.run([&](int ith, int nth) {
    for (int i = ith; i < n; i += nth) fn(i);
  });
}

// The fields both attention operators share: heads, the layer's KV cache in ggml strides, scale.
template <typename Args>
void Engine::describe_attention(int layer, Args& a) const {
  const ModelConfig& c = config_;
  a.n_q_heads = c.n_head;
  a.n_kv_heads = c.n_head_kv;
  a.D = c.head_dim;
  a.K = cache_.k(layer, 0);
  a.V = cache_.v(layer, 0);
  a.k_nb1 = a.v_nb1 = c.head_dim * sizeof(fp16_t);
  a.k_nb2 = a.v_nb2 = cache_.head_stride() * sizeof(fp16_t);
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
}

cpu::SparseAttentionArgs Engine::attention_args(int layer, const float* q, float* out, int64_t n_kv,
                                                const int32_t* blocks, int64_t n_sel, int64_t blocks_stride) {
  cpu::SparseAttentionArgs a;
  describe_attention(layer, a);
  a.q = q;
  a.n_kv = n_kv;
  a.block_size = resa_.select.block_size;
  a.blocks = blocks;
  a.n_sel = n_sel;
  a.blocks_stride = blocks_stride;
  a.out = out;
  return a;
}

void Engine::attention_layer(int layer, int n, int pos0, bool sparse) {
  if (n == 1) {
    decode_attention(layer, pos0, sparse);
    return;
  }
  // Prefill and rectification: query i sees keys [0, pos0 + i]. Work items are (KV head, tile of
  // queries), each reading the cache once for its tile; per query the same numbers as a decode
  // step (see causal_attention.h).
  cpu::CausalAttentionArgs a;
  describe_attention(layer, a);
  a.q = q_.data();
  a.n_queries = n;
  a.pos0 = pos0;
  a.out = attn_.data();
  const cpu::CausalAttentionPlan plan = cpu::causal_attention_plan(a, pool_.size());
  std::atomic<int64_t> next{0};
  pool_.run([&](int, int) {
    for (;;) {
      const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
      if (item >= plan.n_items) break;
      cpu::causal_attention_item(a, plan, item);
    }
  });
}

void Engine::decode_attention(int layer, int pos, bool sparse) {
  const ModelConfig& c = config_;
  const int64_t n_tokens = pos + 1;  // the new token's K/V are already in the cache
  cpu::ResaSelectParams sel = resa_.select;
  const int64_t n_blocks = cpu::resa_block_count(n_tokens, sel.block_size);
  int64_t n_sel;
  const int32_t* blocks;
  if (sparse) {
    n_sel = cpu::resa_select_count(n_tokens, sel);
    selected_.resize(static_cast<size_t>(c.n_head_kv) * n_sel);
    const BlockDescriptorView view = descriptors_->layer_view(layer);
    pool_.run([&](int ith, int nth) {
      cpu::select_blocks(q_.data(), c.n_head, c.n_head_kv, c.head_dim, view, n_tokens, sel, selected_.data(), ith, nth);
    });
    if (resa_.audit || resa_.selection == BlockSelection::Oracle) audit_selection(layer, n_tokens, n_sel);
    blocks = selected_.data();
  } else {
    n_sel = n_blocks;
    blocks = all_blocks_.data();
  }
  if (layer == 0) stats_.decode_steps += 1;
  stats_.blocks_read += n_sel * c.n_head_kv;
  stats_.blocks_total += n_blocks * c.n_head_kv;
  row_attention(layer, n_tokens, blocks, n_sel, sparse ? n_sel : 0);
}

void Engine::row_attention(int layer, int64_t n_tokens, const int32_t* blocks, int64_t n_sel, int64_t blocks_stride) {
  const int n_head = config_.n_head;
  const cpu::SparseAttentionArgs a = attention_args(layer, q_.data(), attn_.data(), n_tokens, blocks, n_sel,
                                                    blocks_stride);
  pool_.run([&](int ith, int nth) { cpu::sparse_attention_heads(a, n_head * ith / nth, n_head * (ith + 1) / nth); });
}

void Engine::audit_selection(int layer, int64_t n_tokens, int64_t n_sel) {
  const ModelConfig& c = config_;
  const int group = c.n_head / c.n_head_kv;
  const int bs = resa_.select.block_size;
  const int64_t n_blocks = cpu::resa_block_count(n_tokens, bs);
  const int64_t n_local = std::min<int64_t>(resa_.select.local_blocks, n_blocks);
  const int64_t stride = cpu::resa_block_count(options_.n_ctx, bs);
  block_mass_.resize(static_cast<size_t>(pool_.size()) * stride);
  if (stats_.audit_samples.empty()) {
    stats_.mass_selected.assign(c.n_layer, 0.0);
    stats_.mass_oracle.assign(c.n_layer, 0.0);
    stats_.audit_samples.assign(c.n_layer, 0);
  }
  std::vector<double> kept(c.n_head_kv), best(c.n_head_kv);
  pool_.run([&](int ith, int nth) {
    double* mass = block_mass_.data() + static_cast<size_t>(ith) * stride;
    std::vector<int32_t> oracle(n_sel);
    for (int h = ith; h < c.n_head_kv; h += nth) {
      cpu::block_attention_mass(&q_[static_cast<size_t>(h) * group * c.head_dim], group, c.head_dim,
                                cache_.k(layer, h), c.head_dim * sizeof(fp16_t), n_tokens, bs,
                                1.0f / std::sqrt(static_cast<float>(c.head_dim)), mass);
      int32_t* row = selected_.data() + static_cast<size_t>(h) * n_sel;
      cpu::select_blocks_by_mass(mass, n_blocks, n_sel, n_local, oracle.data());
      if (resa_.selection == BlockSelection::Oracle) std::copy(oracle.begin(), oracle.end(), row);
      kept[h] = cpu::selected_mass(mass, row, n_sel);  // what the step will read
      best[h] = cpu::selected_mass(mass, oracle.data(), n_sel);
    }
  });
  for (int h = 0; h < c.n_head_kv; ++h) {
    stats_.mass_selected[layer] += kept[h];
    stats_.mass_oracle[layer] += best[h];
    stats_.audit_samples[layer] += 1;
  }
}

void Engine::forward_chunk(const int32_t* tokens, int n, int pos0, float* logits, bool all_logits, bool sparse) {
  const ModelConfig& c = config_;
  const int64_t e = c.n_embd, ff = c.n_ff;
  const int qd = c.n_head * c.head_dim, kvd = c.n_head_kv * c.head_dim;
  const cpu::RopeStyle rope_style = c.rope_neox ? cpu::RopeStyle::NeoX : cpu::RopeStyle::Normal;

  parallel_rows(n, [&](int i) { cpu::dequantize_weight_row(weights_.token_embd, tokens[i], &x_[i * e]); });

  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = weights_.layers[l];
    parallel_rows(n, [&](int i) {
      cpu::rms_norm(&x_[i * e], static_cast<const float*>(w.attn_norm.data), &h_[i * e], 1, e, c.rms_eps);
    });
    const cpu::MatmulOutput qkv[3] = {
        {&w.wq, q_.data(), static_cast<const float*>(w.bq.data)},
        {&w.wk, k_.data(), static_cast<const float*>(w.bk.data)},
        {&w.wv, v_.data(), static_cast<const float*>(w.bv.data)},
    };
    cpu::matmul_multi(qkv, 3, h_.data(), n, pool_, matmul_scratch_);
    parallel_rows(n, [&](int i) {
      cpu::rope(&q_[(size_t)i * qd], c.n_head, c.head_dim, pos0 + i, c.rope_freq_base, rope_style);
      cpu::rope(&k_[(size_t)i * kvd], c.n_head_kv, c.head_dim, pos0 + i, c.rope_freq_base, rope_style);
      cache_.store(l, pos0 + i, &k_[(size_t)i * kvd], &v_[(size_t)i * kvd]);
    });
    if (descriptors_ && mode_ != AttentionMode::Dense) {
      if (n == 1) {
        descriptors_->append(l, pos0, k_.data());
      } else {
        const size_t nb1 = c.head_dim * sizeof(fp16_t), nb2 = cache_.head_stride() * sizeof(fp16_t);
        descriptors_->refresh(l, pos0, n, cache_.k(l, 0), nb1, nb2, pos0 + n);
      }
    }
    // The last layer's K/V are stored above; what follows only feeds the logits. With none wanted
    // (a prefill chunk before the last) it is skipped, and with only the last row's wanted it runs
    // for that row alone, as a decode step at its position (the same numbers: causal_attention.h).
    const bool tail = l == c.n_layer - 1 && n > 1 && !all_logits;
    if (tail && !logits) break;
    int rows = n;
    float* xr = x_.data();
    if (tail) {
      std::copy_n(&q_[(size_t)(n - 1) * qd], qd, q_.data());
      const int64_t n_tokens = pos0 + n;
      row_attention(l, n_tokens, all_blocks_.data(), cpu::resa_block_count(n_tokens, resa_.select.block_size), 0);
      rows = 1;
      xr += (int64_t)(n - 1) * e;
    } else {
      attention_layer(l, n, pos0, sparse);
    }
    cpu::matmul(w.wo, attn_.data(), rows, out_.data(), nullptr, pool_, matmul_scratch_);
    parallel_rows(rows, [&](int i) {
      cpu::add_in_place(&xr[i * e], &out_[i * e], e);
      cpu::rms_norm(&xr[i * e], static_cast<const float*>(w.ffn_norm.data), &h_[i * e], 1, e, c.rms_eps);
    });
    const cpu::MatmulOutput gate_up[2] = {{&w.w_gate, gate_.data(), nullptr}, {&w.w_up, up_.data(), nullptr}};
    cpu::matmul_multi(gate_up, 2, h_.data(), rows, pool_, matmul_scratch_);
    parallel_rows(rows, [&](int i) { cpu::swiglu(&gate_[i * ff], &up_[i * ff], &gate_[i * ff], ff); });
    cpu::matmul(w.w_down, gate_.data(), rows, out_.data(), nullptr, pool_, matmul_scratch_);
    parallel_rows(rows, [&](int i) { cpu::add_in_place(&xr[i * e], &out_[i * e], e); });
  }
  if (!logits) return;
  // Only the rows whose logits are wanted go through the output matrix (the largest one).
  const int first = all_logits ? 0 : n - 1;
  const int rows = n - first;
  parallel_rows(rows, [&](int i) {
    cpu::rms_norm(&x_[(first + i) * e], static_cast<const float*>(weights_.output_norm.data), &h_[i * e], 1, e,
                  c.rms_eps);
  });
  cpu::matmul(weights_.output, h_.data(), rows, logits, nullptr, pool_, matmul_scratch_);
}

}  // namespace pyresa
