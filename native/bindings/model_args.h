// The Python layer describes a model to every engine (CPU or CUDA) with the same two dicts:
// the config from GGUF metadata and the tensor table of memory-mapped bytes. Converting them
// is shared here so the engines' bindings cannot drift apart.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/model_loader.h"

namespace pyresa::bindings {

namespace nb = nanobind;

inline ModelConfig config_from_dict(const nb::dict& d) {
  ModelConfig c;
  auto get_int = [&](const char* k) { return nb::cast<int>(d[k]); };
  c.arch = nb::cast<std::string>(d["arch"]);
  c.n_layer = get_int("n_layer");
  c.n_embd = get_int("n_embd");
  c.n_head = get_int("n_head");
  c.n_head_kv = get_int("n_head_kv");
  c.head_dim = get_int("head_dim");
  c.n_ff = get_int("n_ff");
  c.n_vocab = get_int("n_vocab");
  c.n_ctx_train = get_int("n_ctx_train");
  c.rope_freq_base = nb::cast<float>(d["rope_freq_base"]);
  c.rms_eps = nb::cast<float>(d["rms_eps"]);
  c.rope_neox = nb::cast<bool>(d["rope_neox"]);
  return c;
}

// tensors: name -> (ggml type id, shape as ggml ne list, uint8 array of the tensor's bytes)
inline std::map<std::string, TensorRef> tensors_from_dict(const nb::dict& d) {
  using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  std::map<std::string, TensorRef> out;
  for (auto [key, value] : d) {
    auto tup = nb::cast<nb::tuple>(value);
    TensorRef r;
    r.type = nb::cast<int32_t>(tup[0]);
    auto shape = nb::cast<std::vector<int64_t>>(tup[1]);
    r.n_dims = static_cast<int>(shape.size());
    for (size_t i = 0; i < shape.size() && i < 4; ++i) r.ne[i] = shape[i];
    Bytes data = nb::cast<Bytes>(tup[2]);
    r.data = data.data();
    r.n_bytes = data.size();
    out[nb::cast<std::string>(key)] = r;
  }
  return out;
}

}  // namespace pyresa::bindings
