// One model and one sequence on the CPU: the KV cache, the forward pass, and the position.
// Python calls eval() once per prompt chunk or decoded token; nothing Python runs inside it.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backends/cpu/matmul.h"
#include "backends/cpu/thread_pool.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace pyresa {

struct EngineOptions {
  int n_ctx = 0;       // KV cache capacity in tokens
  int n_threads = 0;   // 0: physical cores
  int n_batch = 256;   // prefill chunk: bounds the activation memory of long prompts
};

class Engine {
 public:
  Engine(ModelConfig config, ModelWeights weights, EngineOptions options);

  const ModelConfig& config() const { return config_; }
  int n_ctx() const { return options_.n_ctx; }
  int n_threads() const { return pool_.size(); }
  int n_past() const { return n_past_; }
  size_t kv_bytes() const { return cache_.bytes(); }

  // Forget the cache past the first n tokens (n ≤ n_past); the next eval continues from there.
  void truncate(int n);

  // Runs `tokens` through the model at positions n_past, n_past+1, ... and appends them to
  // the cache. Writes the logits of every token ([n][n_vocab]) when all_logits, else of the
  // last one only ([n_vocab]). Throws ContextFullError if they do not fit.
  void eval(const int32_t* tokens, int n, bool all_logits, float* logits);

 private:
  struct Scratch;
  void forward_chunk(const int32_t* tokens, int n, int pos0, float* logits, bool all_logits);
  void attention_layer(int layer, int n, int pos0);
  void parallel_rows(int n, const std::function<void(int)>& fn);

  ModelConfig config_;
  ModelWeights weights_;
  EngineOptions options_;
  cpu::ThreadPool pool_;
  KvCache cache_;
  cpu::MatmulScratch matmul_scratch_;
  std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_, out_;
  int n_past_ = 0;
};

}  // namespace pyresa
