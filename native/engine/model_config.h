// Hyper-parameters of a decoder-only transformer, read from GGUF metadata by the Python layer.
#pragma once
#include <string>

namespace pyresa {

struct ModelConfig {
  std::string arch;        // "llama" or "qwen2"
  int n_layer = 0;
  int n_embd = 0;          // hidden size
  int n_head = 0;          // query heads
  int n_head_kv = 0;       // key/value heads (GQA when < n_head)
  int head_dim = 0;
  int n_ff = 0;            // feed-forward size
  int n_vocab = 0;
  int n_ctx_train = 0;     // context length the model was trained for
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool rope_neox = false;  // llama.cpp: llama uses the normal (interleaved) form, qwen2 NeoX
};

}  // namespace pyresa
