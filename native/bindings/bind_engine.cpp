// Bindings for the engine: a model + sequence object driven from pyresa.model.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model_loader.h"
#include "bindings/model_args.h"
#include "bindings/stats_dict.h"
#include "bindings/numpy_arrays.h"

namespace nb = nanobind;
using namespace pyresa;
using bindings::config_from_dict;
using bindings::tensors_from_dict;
using bindings::float_array;

namespace {

using Tokens = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

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
      .def("set_attention",
           [](Engine& e, const std::string& mode, int block_size, double ratio, int min_blocks, int local_blocks,
              int rectify_every, const std::string& selection, bool audit) {
             AttentionMode m;
             if (mode == "dense") m = AttentionMode::Dense;
             else if (mode == "sparse") m = AttentionMode::Sparse;
             else if (mode == "resa") m = AttentionMode::Resa;
             else throw std::invalid_argument("attention must be 'dense', 'sparse' or 'resa', got '" + mode + "'");
             ResaParams p;
             p.select.block_size = block_size;
             p.select.ratio = ratio;
             p.select.min_blocks = min_blocks;
             p.select.local_blocks = local_blocks;
             p.rectify_every = rectify_every;
             if (selection == "minmax") p.selection = BlockSelection::MinMax;
             else if (selection == "oracle") p.selection = BlockSelection::Oracle;
             else throw std::invalid_argument("selection must be 'minmax' or 'oracle', got '" + selection + "'");
             p.audit = audit;
             e.set_attention(m, p);
           },
           nb::arg("mode"), nb::arg("block_size") = 16, nb::arg("ratio") = 0.1, nb::arg("min_blocks") = 16,
           nb::arg("local_blocks") = 1, nb::arg("rectify_every") = 32, nb::arg("selection") = "minmax",
           nb::arg("audit") = false)
      .def("stats",
           [](const Engine& e) {
             nb::dict d = bindings::stats_dict(e.stats());
             d["pending_rectification"] = e.pending_rectification();
             return d;
           })
      .def("reset_stats", &Engine::reset_stats)
      .def("kv",
           [](const Engine& e, int layer) {
             // copies of K and V for the tokens in the cache: uint16 (F16 bits) [n_kv_heads][n_past][D]
             const KvCache& c = e.cache();
             if (layer < 0 || layer >= e.config().n_layer) throw std::out_of_range("layer out of range");
             const size_t H = c.n_kv_heads(), T = e.n_past(), D = c.head_dim();
             auto copy = [&](bool keys) {
               auto* buf = new uint16_t[H * T * D];
               for (size_t h = 0; h < H; ++h) {
                 const fp16_t* src = keys ? c.k(layer, h) : c.v(layer, h);
                 std::copy(src, src + T * D, buf + h * T * D);
               }
               nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<uint16_t*>(p); });
               size_t shape[3] = {H, T, D};
               return nb::ndarray<nb::numpy, uint16_t>(buf, 3, shape, owner);
             };
             return nb::make_tuple(copy(true), copy(false));
           },
           nb::arg("layer"), "Copies of the layer's cached K and V (F16 bits), [n_kv_heads][n_past][head_dim].")
      .def("descriptors",
           [](const Engine& e, int layer) {
             // (kmin, kmax) float32 [n_kv_heads][n_blocks][D] for the blocks of the tokens in the cache
             const BlockDescriptors* d = e.descriptors();
             if (!d) throw std::runtime_error("no block descriptors: attention is dense");
             const size_t H = d->n_kv_heads(), D = d->head_dim();
             const size_t B = (e.n_past() + d->block_size() - 1) / d->block_size();
             auto make = [&](bool max) {
               auto* buf = new float[H * B * D];
               for (size_t h = 0; h < H; ++h)
                 for (size_t b = 0; b < B; ++b) {
                   const float* src = max ? d->kmax(layer, h, b) : d->kmin(layer, h, b);
                   std::copy(src, src + D, buf + (h * B + b) * D);
                 }
               nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
               size_t shape[3] = {H, B, D};
               return nb::ndarray<nb::numpy, float>(buf, 3, shape, owner);
             };
             return nb::make_tuple(make(false), make(true));
           },
           nb::arg("layer"))
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
