// Builds ModelWeights from the tensor table of a GGUF file (views, no copies), checking
// every tensor the architecture needs: presence, type, and shape.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace pyresa {

struct TensorRef {
  int32_t type = 0;       // ggml type id
  int64_t ne[4] = {1, 1, 1, 1};
  int n_dims = 0;
  const void* data = nullptr;
  size_t n_bytes = 0;
};

// Throws ModelFormatError (missing tensor, wrong shape, too few bytes) or UnsupportedError
// (architecture or tensor type pyresa cannot run).
ModelWeights load_model_weights(const ModelConfig& config, const std::map<std::string, TensorRef>& tensors);

void validate_config(const ModelConfig& config);

}  // namespace pyresa
