// The tensors of a model, as views into the memory-mapped GGUF file (never copied).
#pragma once
#include <vector>

#include "backends/cpu/matmul.h"

namespace pyresa {

using cpu::WeightView;

struct LayerWeights {
  WeightView attn_norm;
  WeightView wq, wk, wv, wo;
  WeightView bq, bk, bv;  // qwen2 only; absent (data == nullptr) for llama
  WeightView ffn_norm;
  WeightView w_gate, w_up, w_down;
};

struct ModelWeights {
  WeightView token_embd;
  WeightView output_norm;
  WeightView output;  // == token_embd when the model ties its embeddings
  std::vector<LayerWeights> layers;
};

}  // namespace pyresa
