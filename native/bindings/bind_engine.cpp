// Bindings for the engine: a model + sequence object driven from pyresa.model.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model_loader.h"

namespace nb = nanobind;
using namespace pyresa;

namespace {

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Tokens = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

ModelConfig config_from_dict(const nb::dict& d) {
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
std::map<std::string, TensorRef> tensors_from_dict(const nb::dict& d) {
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

nb::ndarray<nb::numpy, float> float_array(std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  float* data = new float[n];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return nb::ndarray<nb::numpy, float>(data, shape.size(), shape.data(), owner);
}

}  // namespace

void bind_engine(nb::module_& m) {
  nb::class_<Engine>(m, "Engine", "One model and one sequence (KV cache) on the CPU.")
      .def("__init__",
           [](Engine* self, nb::dict config, nb::dict tensors, int n_ctx, int n_threads, int n_batch) {
             ModelConfig c = config_from_dict(config);
             ModelWeights w = load_model_weights(c, tensors_from_dict(tensors));
             new (self) Engine(c, std::move(w), EngineOptions{n_ctx, n_threads, n_batch});
           },
           nb::arg("config"), nb::arg("tensors"), nb::arg("n_ctx"), nb::arg("n_threads") = 0,
           nb::arg("n_batch") = 256)
      .def_prop_ro("n_past", &Engine::n_past)
      .def_prop_ro("n_ctx", &Engine::n_ctx)
      .def_prop_ro("n_threads", &Engine::n_threads)
      .def_prop_ro("kv_bytes", &Engine::kv_bytes)
      .def("truncate", &Engine::truncate, nb::arg("n"))
      .def("eval",
           [](Engine& e, Tokens tokens, bool all_logits) {
             const int n = static_cast<int>(tokens.size());
             const size_t vocab = e.config().n_vocab;
             auto out = all_logits ? float_array({static_cast<size_t>(n), vocab}) : float_array({vocab});
             {
               nb::gil_scoped_release release;  // long call: let other Python threads run
               e.eval(tokens.data(), n, all_logits, out.data());
             }
             return out;
           },
           nb::arg("tokens"), nb::arg("all_logits") = false,
           "Append tokens to the sequence; logits of the last token, or of all of them.");
}
