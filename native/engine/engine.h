// One model and one sequence on the CPU: the KV cache, the forward pass, and the position.
// Python calls eval() once per prompt chunk or decoded token; nothing Python runs inside it.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backends/cpu/matmul.h"
#include "backends/cpu/thread_pool.h"
#include "backends/cpu/block_select.h"
#include "backends/cpu/sparse_attention.h"
#include "engine/block_descriptors.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace pyresa {

// How decode steps (one new token) attend. Prefill and rectification are always dense.
enum class AttentionMode { Dense, Sparse, Resa };

// How a sparse decode step picks its blocks. MinMax is ReSA's rule (descriptor upper bounds);
// Oracle computes every block's true attention mass first and keeps the heaviest: it reads the
// whole cache, so it is no speed-up, only the bound any descriptor rule can reach (diagnostic).
enum class BlockSelection { MinMax, Oracle };

struct ResaParams {
  cpu::ResaSelectParams select;  // block_size, ratio, min_blocks, local_blocks
  int rectify_every = 32;        // f: dense re-run of every f sparse-decoded tokens (resa)
  BlockSelection selection = BlockSelection::MinMax;
  // Measure, at every sparse step, the attention mass the selection keeps and the oracle's
  // (AttentionStats::mass_*). Costs a dense step's reading and more: for evaluation only.
  bool audit = false;
};

// Counters since the last reset_stats(): what decode steps read, and rectifications done.
struct AttentionStats {
  int64_t decode_steps = 0;
  int64_t blocks_read = 0;   // KV blocks attended, summed over layers and KV heads
  int64_t blocks_total = 0;  // KV blocks a dense step would have read
  int64_t rectifications = 0;
  int64_t rectified_tokens = 0;
  // Audit (ResaParams::audit or Oracle selection), per layer: sums over sparse steps and KV heads
  // of the true attention mass (group mean) in the selected blocks, and in the oracle's n_sel
  // heaviest blocks; audit_samples[l] counts the (step, KV head) pairs summed.
  std::vector<double> mass_selected, mass_oracle;
  std::vector<int64_t> audit_samples;
};

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

  // Decode attention mode. Switching to sparse/resa builds the block descriptors of the
  // tokens already in the cache.
  void set_attention(AttentionMode mode, const ResaParams& params);
  AttentionMode attention_mode() const { return mode_; }
  const AttentionStats& stats() const { return stats_; }
  void reset_stats() { stats_ = AttentionStats{}; }
  const ResaParams& resa_params() const { return resa_; }
  // Read access for tests and tools: the cache and the descriptors of a layer.
  const KvCache& cache() const { return cache_; }
  const BlockDescriptors* descriptors() const { return descriptors_.get(); }

  // Tokens decoded sparsely since the last rectification (their K/V are approximate).
  int pending_rectification() const { return n_sparse_; }

  // Runs `tokens` through the model at positions n_past, n_past+1, ... and appends them to
  // the cache. Writes the logits of every token ([n][n_vocab]) when all_logits, else of the
  // last one only ([n_vocab]). Throws ContextFullError if they do not fit.
  // In resa mode, a one-token eval after rectify_every sparse steps (and any multi-token eval
  // while sparse tokens are pending) first re-runs the pending tokens densely with the new
  // ones: their K/V and descriptors are rewritten, and the logits come from that dense pass.
  void eval(const int32_t* tokens, int n, bool all_logits, float* logits);

 private:
  struct Scratch;
  void eval_dense(const int32_t* tokens, int n, bool all_logits, float* logits);
  void forward_chunk(const int32_t* tokens, int n, int pos0, float* logits, bool all_logits, bool sparse);
  template <typename Args>
  void describe_attention(int layer, Args& a) const;
  void attention_layer(int layer, int n, int pos0, bool sparse);
  void decode_attention(int layer, int pos, bool sparse);  // sparse: select blocks; else all of them
  // Attention of the one query row in q_ over the first n_tokens cached tokens, reading the given
  // blocks (all of them: blocks_stride 0), into attn_. No statistics.
  void row_attention(int layer, int64_t n_tokens, const int32_t* blocks, int64_t n_sel, int64_t blocks_stride);
  // Audit / oracle selection for one sparse step of one layer (see BlockSelection).
  void audit_selection(int layer, int64_t n_tokens, int64_t n_sel);
  cpu::SparseAttentionArgs attention_args(int layer, const float* q, float* out, int64_t n_kv,
                                          const int32_t* blocks, int64_t n_sel, int64_t blocks_stride);
  void parallel_rows(int n, const std::function<void(int)>& fn);

  ModelConfig config_;
  ModelWeights weights_;
  EngineOptions options_;
  cpu::ThreadPool pool_;
  KvCache cache_;
  cpu::MatmulScratch matmul_scratch_;
  std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_, out_;
  int n_past_ = 0;
  std::vector<int32_t> history_;  // token ids in the cache (rectification re-runs them)

  AttentionMode mode_ = AttentionMode::Dense;
  ResaParams resa_;
  std::unique_ptr<BlockDescriptors> descriptors_;
  std::vector<int32_t> selected_;   // [n_kv_heads][n_sel] of the current decode step
  std::vector<double> block_mass_;  // [n_threads][max blocks]: audit scratch
  std::vector<int32_t> all_blocks_; // [n_kv_heads][n] rows of 0, 1, 2, ...: "every block" for dense attention
  int n_sparse_ = 0;                 // sparse-decoded tokens not yet rectified
  AttentionStats stats_;
};

}  // namespace pyresa
