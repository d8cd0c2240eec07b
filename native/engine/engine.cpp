#include "engine/engine.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "backends/cpu/attention.h"
#include "backends/cpu/ops.h"
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
}

void Engine::truncate(int n) {
  if (n < 0 || n > n_past_)
    throw std::invalid_argument("truncate(" + std::to_string(n) + ") outside [0, " + std::to_string(n_past_) + "]");
  n_past_ = n;
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
  const int64_t vocab = config_.n_vocab;
  for (int start = 0; start < n; start += options_.n_batch) {
    const int m = std::min(options_.n_batch, n - start);
    const bool last_chunk = start + m == n;
    float* out = nullptr;
    if (all_logits) out = logits + start * vocab;
    else if (last_chunk) out = logits;
    forward_chunk(tokens + start, m, n_past_, out, all_logits);
    n_past_ += m;
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

void Engine::attention_layer(int layer, int n, int pos0) {
  const ModelConfig& c = config_;
  const cpu::KvLayerView kv = cache_.layer_view(layer);
  cpu::attention_dense(q_.data(), n, pos0, c.n_head, kv, 1.0f / std::sqrt((float)c.head_dim), attn_.data(), pool_);
}

void Engine::forward_chunk(const int32_t* tokens, int n, int pos0, float* logits, bool all_logits) {
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
    attention_layer(l, n, pos0);
    cpu::matmul(w.wo, attn_.data(), n, out_.data(), nullptr, pool_, matmul_scratch_);
    parallel_rows(n, [&](int i) {
      cpu::add_in_place(&x_[i * e], &out_[i * e], e);
      cpu::rms_norm(&x_[i * e], static_cast<const float*>(w.ffn_norm.data), &h_[i * e], 1, e, c.rms_eps);
    });
    const cpu::MatmulOutput gate_up[2] = {{&w.w_gate, gate_.data(), nullptr}, {&w.w_up, up_.data(), nullptr}};
    cpu::matmul_multi(gate_up, 2, h_.data(), n, pool_, matmul_scratch_);
    parallel_rows(n, [&](int i) { cpu::swiglu(&gate_[i * ff], &up_[i * ff], &gate_[i * ff], ff); });
    cpu::matmul(w.w_down, gate_.data(), n, out_.data(), nullptr, pool_, matmul_scratch_);
    parallel_rows(n, [&](int i) { cpu::add_in_place(&x_[i * e], &out_[i * e], e); });
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
