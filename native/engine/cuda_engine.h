// One model and one sequence on an NVIDIA GPU: weights, F16 KV cache, block descriptors and the
// whole forward pass in device memory. Same interface as the CPU Engine (eval, truncate, n_past,
// set_attention, stats), plus what only a GPU engine has: logits left on the device (CuPy),
// greedy sampling on the device, and a decode loop with no host round trip per token.
//
// Decode steps (one token) run as captured CUDA graphs: positions are read from device memory,
// so one graph replays at every position (one graph per attention mode and split count).
// This header has no CUDA types, so host-only code (the bindings) can include it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"  // AttentionStats, shared with the CPU engine
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace pyresa {

struct CudaEngineOptions {
  int n_ctx = 0;
  int n_batch = 512;  // prefill chunk (tokens per forward)
  int device = 0;
};

// The largest logits of one position, taken on the device (sampling without copying the vocabulary).
struct TopCandidates {
  std::vector<int32_t> ids;  // min(k, n_vocab) ids, unordered; ties at the k-th value: lowest ids
  std::vector<float> logits;  // their logits, after the repetition penalty
  double max_logit = 0.0;     // with want_sum: the largest logit and sum(exp(logit - max)) over the
  double sum_exp = 0.0;       // whole vocabulary, in double (else 0)
};

struct AttentionSettings {
  std::string mode = "dense";  // "dense", "sparse" (block-sparse decode) or "resa" (sparse + rectification)
  int block_size = 16;
  double ratio = 0.1;
  int min_blocks = 16;
  int local_blocks = 1;
  int rectify_every = 32;
};

bool cuda_runtime_available();
int cuda_device_count();
std::string cuda_device_name(int device);

class CudaEngine {
 public:
  CudaEngine(ModelConfig config, const ModelWeights& weights, CudaEngineOptions options);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const ModelConfig& config() const;
  int n_ctx() const;
  int n_past() const;
  int device() const;
  size_t device_bytes() const;  // device memory this engine allocated
  size_t kv_bytes() const;

  void truncate(int n);

  // As Engine::eval. `logits` is host memory, or device memory when logits_on_device (CuPy).
  // logits may be null: nothing is copied out (the last row stays available on the device).
  void eval(const int32_t* tokens, int n, bool all_logits, float* logits, bool logits_on_device = false);
  // eval of the tokens, then the argmax of the last logits, computed on the device.
  int32_t eval_greedy(const int32_t* tokens, int n);
  // eval of the tokens, then the k (1..1024) largest logits of the last position, after the
  // repetition penalty on `penalized` (distinct ids; logit / penalty if > 0, else * penalty).
  TopCandidates eval_top(const int32_t* tokens, int n, int k, const std::vector<int32_t>& penalized, float penalty,
                         bool want_sum);
  // Host copy of the last position's logits as the last eval left them on the device [n_vocab].
  void last_logits(float* out);
  // Feeds `token`, then each argmax back in, n_new times, without copying logits or syncing per
  // token. Returns the n_new argmax tokens (the last one is not evaluated).
  std::vector<int32_t> decode_greedy(int32_t token, int n_new);

  void set_attention(const AttentionSettings& s);
  const AttentionSettings& attention() const;
  AttentionStats stats() const;
  void reset_stats();

  // Benchmarks: random F16 keys/values for positions [0, n_tokens), descriptors rebuilt, random
  // token history, n_past = n_tokens. The decode that follows is the real decode path.
  void fill_synthetic(int n_tokens, uint64_t seed);
  void synchronize();
  // Benchmarks: one eager decode (or rectification) step at the current position with events
  // between its ops; milliseconds per op label, summed over layers. The position does not advance.
  std::vector<std::pair<std::string, double>> profile_step(int32_t token, bool rectify);
  // The dense attention kernels a rectification and a prefill chunk use (attention_batched
  // variant, 0 = the general kernel), as chosen from PYRESA_CUDA_RECT_KERNEL / _PREFILL_KERNEL
  // and what the device supports.
  std::pair<int, int> dense_attention_kernels() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyresa
