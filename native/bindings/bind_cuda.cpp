// Bindings for the CUDA backend: CudaEngine (the CPU Engine's interface plus device-side logits
// and greedy decoding), device queries, and one test hook per kernel. In a CPU-only build only
// cuda_available() (False) and cuda_device_count() (0) exist.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

namespace nb = nanobind;

#ifndef PYRESA_HAVE_CUDA

void bind_cuda(nb::module_& m) {
  m.def("cuda_available", []() { return false; }, "Whether this build has the CUDA backend and a GPU is present.");
  m.def("cuda_device_count", []() { return 0; });
  m.attr("cuda_built") = false;
}

#else

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backends/cuda/test_hooks.h"
#include "engine/cuda_engine.h"
#include "engine/model_loader.h"
#include "bindings/model_args.h"
#include "bindings/stats_dict.h"
#include "bindings/numpy_arrays.h"

using namespace pyresa;
using bindings::config_from_dict;
using bindings::tensors_from_dict;
using bindings::float_array;
using bindings::numpy_array;

namespace {

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Tokens = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32 = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using U16 = nb::ndarray<const uint16_t, nb::c_contig, nb::device::cpu>;
using I32 = nb::ndarray<const int32_t, nb::c_contig, nb::device::cpu>;


}  // namespace

namespace pyresa::cuda_bind {
void* device_alloc_for_python(size_t bytes, int device);
void device_free_for_python(void* p, int device) noexcept;
}  // namespace pyresa::cuda_bind

void bind_cuda(nb::module_& m) {
  m.attr("cuda_built") = true;
  m.def("cuda_available", &cuda_runtime_available, "Whether this build has the CUDA backend and a GPU is present.");
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_device_name", &cuda_device_name, nb::arg("device") = 0);

  nb::class_<CudaEngine>(m, "CudaEngine", "One model and one sequence (KV cache) on an NVIDIA GPU.")
      .def("__init__",
           [](CudaEngine* self, nb::dict config, nb::dict tensors, int n_ctx, int n_threads, int n_batch, int device) {
             (void)n_threads;
             ModelConfig c = config_from_dict(config);
             ModelWeights w = load_model_weights(c, tensors_from_dict(tensors));
             CudaEngineOptions o;
             o.n_ctx = n_ctx;
             o.n_batch = n_batch;
             o.device = device;
             nb::gil_scoped_release release;
             new (self) CudaEngine(c, w, o);
           },
           nb::arg("config"), nb::arg("tensors"), nb::arg("n_ctx"), nb::arg("n_threads") = 0,
           nb::arg("n_batch") = 512, nb::arg("device") = 0)
      .def_prop_ro("n_past", &CudaEngine::n_past)
      .def_prop_ro("n_ctx", &CudaEngine::n_ctx)
      .def_prop_ro("n_threads", [](const CudaEngine&) { return 0; })
      .def_prop_ro("device", &CudaEngine::device)
      .def_prop_ro("kv_bytes", &CudaEngine::kv_bytes)
      .def_prop_ro("device_bytes", &CudaEngine::device_bytes)
      .def("truncate", &CudaEngine::truncate, nb::arg("n"))
      .def("eval",
           [](CudaEngine& e, Tokens tokens, bool all_logits) {
             const int n = static_cast<int>(tokens.size());
             const size_t vocab = e.config().n_vocab;
             auto out = all_logits ? float_array({static_cast<size_t>(n), vocab}) : float_array({vocab});
             {
               nb::gil_scoped_release release;
               e.eval(tokens.data(), n, all_logits, out.data());
             }
             return out;
           },
           nb::arg("tokens"), nb::arg("all_logits") = false,
           "Append tokens to the sequence; logits of the last token, or of all of them (numpy).")
      .def("eval_device",
           [](CudaEngine& e, Tokens tokens, bool all_logits) {
             const int n = static_cast<int>(tokens.size());
             const size_t vocab = e.config().n_vocab, rows = all_logits ? n : 1;
             const int dev = e.device();
             float* p = static_cast<float*>(pyresa::cuda_bind::device_alloc_for_python(rows * vocab * sizeof(float), dev));
             nb::capsule owner(p, [](void* q) noexcept { pyresa::cuda_bind::device_free_for_python(q, -1); });
             try {
               nb::gil_scoped_release release;
               e.eval(tokens.data(), n, all_logits, p, true);
             } catch (...) {
               throw;
             }
             std::vector<size_t> shape = all_logits ? std::vector<size_t>{rows, vocab} : std::vector<size_t>{vocab};
             return nb::ndarray<float, nb::device::cuda>(p, shape.size(), shape.data(), owner, nullptr,
                                                         nb::dtype<float>(), nb::device::cuda::value, dev);
           },
           nb::arg("tokens"), nb::arg("all_logits") = false,
           "As eval, but the logits stay on the GPU: a DLPack array (cupy.from_dlpack takes it without a copy).")
      .def("eval_greedy",
           [](CudaEngine& e, Tokens tokens) {
             nb::gil_scoped_release release;
             return e.eval_greedy(tokens.data(), static_cast<int>(tokens.size()));
           },
           nb::arg("tokens"), "eval, then the argmax of the last logits, taken on the GPU (no logits copied).")
      .def("eval_top",
           [](CudaEngine& e, Tokens tokens, int k, Tokens penalized, float penalty, bool want_sum) {
             TopCandidates c;
             {
               nb::gil_scoped_release release;
               const std::vector<int32_t> pen(penalized.data(), penalized.data() + penalized.size());
               c = e.eval_top(tokens.data(), static_cast<int>(tokens.size()), k, pen, penalty, want_sum);
             }
             const size_t n = c.ids.size();
             return nb::make_tuple(numpy_array(std::move(c.ids), {n}), numpy_array(std::move(c.logits), {n}),
                                   c.max_logit, c.sum_exp);
           },
           nb::arg("tokens"), nb::arg("k"), nb::arg("penalized"), nb::arg("penalty"), nb::arg("want_sum"),
           "eval, then the k largest logits of the last position after the repetition penalty, taken on the GPU: "
           "(ids, logits, max, sum of exp(logit - max) over the vocabulary if want_sum else 0).")
      .def("last_logits",
           [](CudaEngine& e) {
             auto out = float_array({(size_t)e.config().n_vocab});
             {
               nb::gil_scoped_release release;
               e.last_logits(out.data());
             }
             return out;
           },
           "The last evaluated position's logits, copied from the GPU.")
      .def("decode_greedy",
           [](CudaEngine& e, int token, int n_new) {
             std::vector<int32_t> out;
             {
               nb::gil_scoped_release release;
               out = e.decode_greedy(token, n_new);
             }
             const size_t n = out.size();
             return numpy_array(std::move(out), {n});
           },
           nb::arg("token"), nb::arg("n_new"),
           "Feed `token`, then each argmax, n_new steps on the GPU with no per-token host sync; returns the n_new tokens.")
      .def("set_attention",
           [](CudaEngine& e, const std::string& mode, int block_size, double ratio, int min_blocks, int local_blocks,
              int rectify_every) {
             AttentionSettings s;
             s.mode = mode;
             s.block_size = block_size;
             s.ratio = ratio;
             s.min_blocks = min_blocks;
             s.local_blocks = local_blocks;
             s.rectify_every = rectify_every;
             e.set_attention(s);
           },
           nb::arg("mode"), nb::arg("block_size") = 16, nb::arg("ratio") = 0.1, nb::arg("min_blocks") = 16,
           nb::arg("local_blocks") = 1, nb::arg("rectify_every") = 32)
      .def("stats",
           [](const CudaEngine& e) { return bindings::stats_dict(e.stats()); })
      .def("reset_stats", &CudaEngine::reset_stats)
      .def("fill_synthetic", &CudaEngine::fill_synthetic, nb::arg("n_tokens"), nb::arg("seed") = 1,
           "Benchmarks: random F16 K/V for positions [0, n_tokens), descriptors rebuilt, n_past = n_tokens.")
      .def("synchronize", &CudaEngine::synchronize)
      .def("dense_attention_kernels", &CudaEngine::dense_attention_kernels,
           "(rectification, prefill chunk) dense attention kernel: attention_batched variant, 0 = the general kernel.")
      .def("profile_step",
           [](CudaEngine& e, int token, bool rectify) {
             auto r = e.profile_step(token, rectify);
             nb::dict d;
             for (auto& kv : r) d[kv.first.c_str()] = kv.second;
             return d;
           },
           nb::arg("token"), nb::arg("rectify") = false,
           "Milliseconds per op of one eager step at the current position (the position does not advance).");

  // ---- test hooks: one kernel each, host arrays in and out -----------------------------------
  nb::module_ t = m.def_submodule("cuda_test", "Single CUDA kernels for tests against the CPU backend.");
  t.def("matvec", [](int type, int64_t rows, int64_t cols, Bytes w, F32 x, int n, nb::object bias, int path) {
    std::vector<float> b;
    if (!bias.is_none()) {
      F32 ba = nb::cast<F32>(bias);
      b.assign(ba.data(), ba.data() + ba.size());
    }
    if (x.size() != (size_t)(n * cols)) throw std::invalid_argument("x must hold n * cols floats");
    auto y = cuda_test::matvec(type, rows, cols, w.data(), w.size(), x.data(), n, b.empty() ? nullptr : b.data(), path);
    return numpy_array(std::move(y), {(size_t)n, (size_t)rows});
  }, nb::arg("type"), nb::arg("rows"), nb::arg("cols"), nb::arg("w"), nb::arg("x"), nb::arg("n"),
     nb::arg("bias") = nb::none(), nb::arg("path") = 0);
  t.def("small_mmq", [](int type, int64_t rows, int64_t cols, Bytes w, F32 x, int n, nb::object bias, bool accumulate,
                        int stages, int cap, int mode) {
    std::vector<float> b;
    if (!bias.is_none()) {
      F32 ba = nb::cast<F32>(bias);
      b.assign(ba.data(), ba.data() + ba.size());
    }
    if (x.size() != (size_t)(n * cols)) throw std::invalid_argument("x must hold n * cols floats");
    auto y = cuda_test::small_mmq(type, rows, cols, w.data(), w.size(), x.data(), n, b.empty() ? nullptr : b.data(),
                                  accumulate, stages, cap, mode);
    return numpy_array(std::move(y), {(size_t)n, (size_t)rows});
  }, nb::arg("type"), nb::arg("rows"), nb::arg("cols"), nb::arg("w"), nb::arg("x"), nb::arg("n"),
     nb::arg("bias") = nb::none(), nb::arg("accumulate") = false, nb::arg("stages") = 0, nb::arg("cap") = 0,
     nb::arg("mode") = 1);
  t.def("time_dqmm", &cuda_test::time_dqmm, nb::arg("type"), nb::arg("rows"), nb::arg("cols"), nb::arg("M"),
        nb::arg("path"), nb::arg("reps") = 20);
  t.def("matvec_prep", [](std::vector<int> types, std::vector<int64_t> rows, int64_t cols, Bytes w, F32 x,
                          nb::object norm_w, float eps, int transform, nb::object bias, bool accumulate, int mode,
                          int cap) {
    std::vector<float> nw, bs;
    if (!norm_w.is_none()) { F32 a = nb::cast<F32>(norm_w); nw.assign(a.data(), a.data() + a.size()); }
    if (!bias.is_none()) { F32 a = nb::cast<F32>(bias); bs.assign(a.data(), a.data() + a.size()); }
    if (x.size() != (size_t)cols) throw std::invalid_argument("x must hold cols floats");
    std::vector<uint8_t> act;
    auto y = cuda_test::matvec_prep(types, rows, cols, w.data(), w.size(), x.data(), nw.empty() ? nullptr : nw.data(),
                                    eps, transform, bs.empty() ? nullptr : bs.data(), accumulate, mode, cap, act);
    const size_t ny = y.size(), na = act.size();
    return nb::make_tuple(numpy_array(std::move(y), {ny}), numpy_array(std::move(act), {na}));
  }, nb::arg("types"), nb::arg("rows"), nb::arg("cols"), nb::arg("w"), nb::arg("x"), nb::arg("norm_w").none(),
     nb::arg("eps"), nb::arg("transform"), nb::arg("bias").none(), nb::arg("accumulate"), nb::arg("mode"),
     nb::arg("cap") = 0);
  t.def("matvec_mma", [](std::vector<int> types, std::vector<int64_t> rows, int64_t cols, Bytes w, F32 x,
                         nb::object bias, bool accumulate, int split, int mode, int cap) {
    std::vector<float> bs;
    if (!bias.is_none()) { F32 a = nb::cast<F32>(bias); bs.assign(a.data(), a.data() + a.size()); }
    if (x.size() != (size_t)cols) throw std::invalid_argument("x must hold cols floats");
    auto y = cuda_test::matvec_mma(types, rows, cols, w.data(), w.size(), x.data(), bs.empty() ? nullptr : bs.data(),
                                   accumulate, split, mode, cap);
    const size_t ny = y.size();
    return numpy_array(std::move(y), {ny});
  }, nb::arg("types"), nb::arg("rows"), nb::arg("cols"), nb::arg("w"), nb::arg("x"), nb::arg("bias").none(),
     nb::arg("accumulate") = false, nb::arg("split") = 0, nb::arg("mode") = 1,
     nb::arg("cap") = 0);
  t.def("matvec_bulk", [](std::vector<int> types, std::vector<int64_t> rows, int64_t cols, Bytes w, F32 x,
                          nb::object bias, bool accumulate, int mode, int cap) {
    std::vector<float> bs;
    if (!bias.is_none()) { F32 a = nb::cast<F32>(bias); bs.assign(a.data(), a.data() + a.size()); }
    if (x.size() != (size_t)cols) throw std::invalid_argument("x must hold cols floats");
    auto y = cuda_test::matvec_bulk(types, rows, cols, w.data(), w.size(), x.data(), bs.empty() ? nullptr : bs.data(),
                                    accumulate, mode, cap);
    const size_t ny = y.size();
    return numpy_array(std::move(y), {ny});
  }, nb::arg("types"), nb::arg("rows"), nb::arg("cols"), nb::arg("w"), nb::arg("x"), nb::arg("bias").none(),
     nb::arg("accumulate") = false, nb::arg("mode") = 1, nb::arg("cap") = 0);
  t.def("matvec_bulk_available", &cuda_test::matvec_bulk_available);
  t.def("gate_up_glu", [](int type, int64_t rows, int64_t cols, Bytes w, F32 x, int mode, int cap, int repeats) {
    if (x.size() != (size_t)cols) throw std::invalid_argument("x must hold cols floats");
    std::vector<uint8_t> act;
    auto y = cuda_test::gate_up_glu(type, rows, cols, w.data(), w.size(), x.data(), mode, cap, repeats, act);
    const size_t ny = y.size(), na = act.size();
    return nb::make_tuple(numpy_array(std::move(y), {ny}), numpy_array(std::move(act), {na}));
  }, nb::arg("type"), nb::arg("rows"), nb::arg("cols"), nb::arg("w"), nb::arg("x"), nb::arg("mode"),
     nb::arg("cap") = 0, nb::arg("repeats") = 1);
  t.def("quantize_rows", [](int act_type, F32 x, int n, int64_t cols) {
    auto r = cuda_test::quantize_rows(act_type, x.data(), n, cols);
    const size_t sz = r.size();
    return numpy_array(std::move(r), {sz});
  });
  t.def("dequantize", [](int type, int64_t rows, int64_t cols, Bytes w) {
    auto r = cuda_test::dequantize(type, rows, cols, w.data(), w.size());
    return numpy_array(std::move(r), {(size_t)rows, (size_t)cols});
  });
  t.def("transform_rows", [](int transform, F32 x, nb::object up, nb::object norm_w, float eps, int n, int64_t cols) {
    std::vector<float> u, w;
    if (!up.is_none()) { F32 a = nb::cast<F32>(up); u.assign(a.data(), a.data() + a.size()); }
    if (!norm_w.is_none()) { F32 a = nb::cast<F32>(norm_w); w.assign(a.data(), a.data() + a.size()); }
    auto r = cuda_test::transform_rows(transform, x.data(), u.empty() ? nullptr : u.data(), w.empty() ? nullptr : w.data(),
                                       eps, n, cols);
    return numpy_array(std::move(r), {(size_t)n, (size_t)cols});
  }, nb::arg("transform"), nb::arg("x"), nb::arg("up").none(), nb::arg("norm_w").none(), nb::arg("eps"), nb::arg("n"),
     nb::arg("cols"));
  t.def("rope", [](F32 x, int n, int n_head, int D, int pos0, float base, bool neox) {
    auto r = cuda_test::rope(x.data(), n, n_head, D, pos0, base, neox);
    return numpy_array(std::move(r), {(size_t)n, (size_t)n_head, (size_t)D});
  });
  t.def("gemm_f16", [](U16 a, U16 b, int M, int N, int K) {
    auto r = cuda_test::gemm_f16(a.data(), b.data(), M, N, K);
    return numpy_array(std::move(r), {(size_t)M, (size_t)N});
  });
  t.def("attention", [](F32 q, int n_tok, int n_head, int n_kv_head, int D, U16 K, U16 V, int cap, int pos0,
                        nb::object blocks, int block_size, float scale, int n_splits, int kernel, int split_query) {
    const int32_t* bp = nullptr;
    int n_sel = 0;
    std::vector<int32_t> bv;
    if (!blocks.is_none()) {
      I32 b = nb::cast<I32>(blocks);
      n_sel = (int)(b.size() / n_kv_head);
      bv.assign(b.data(), b.data() + b.size());
      bp = bv.data();
    }
    auto r = cuda_test::attention(q.data(), n_tok, n_head, n_kv_head, D, K.data(), V.data(), cap, pos0, bp, n_sel,
                                  block_size, scale, n_splits, kernel, split_query);
    return numpy_array(std::move(r), {(size_t)n_tok, (size_t)n_head, (size_t)D});
  }, nb::arg("q"), nb::arg("n_tok"), nb::arg("n_head"), nb::arg("n_kv_head"), nb::arg("D"), nb::arg("K"), nb::arg("V"),
     nb::arg("cap"), nb::arg("pos0"), nb::arg("blocks").none(), nb::arg("block_size"), nb::arg("scale"),
     nb::arg("n_splits"), nb::arg("kernel") = 0, nb::arg("split_query") = -1);
  t.def("attention_timed", [](F32 q, int n_tok, int n_head, int n_kv_head, int D, int n_ctx, int kernel, bool precise,
                              bool split_query, int n_splits, int iters) {
    double ms = 0.0;
    auto r = cuda_test::attention_timed(q.data(), n_tok, n_head, n_kv_head, D, n_ctx, kernel, precise, split_query,
                                        n_splits, iters, ms);
    return nb::make_tuple(ms, numpy_array(std::move(r), {(size_t)n_tok, (size_t)n_head, (size_t)D}));
  }, nb::arg("q"), nb::arg("n_tok"), nb::arg("n_head"), nb::arg("n_kv_head"), nb::arg("D"), nb::arg("n_ctx"),
     nb::arg("kernel"), nb::arg("precise"), nb::arg("split_query"), nb::arg("n_splits"), nb::arg("iters"));
  t.def("attention_batched_splits", &cuda_test::attention_batched_splits, nb::arg("n_tok"), nb::arg("n_head"),
        nb::arg("n_kv_head"), nb::arg("n_keys"), nb::arg("variant"));
  t.def("attention_wgmma_available", &cuda_test::attention_wgmma_available);
  t.def("descriptors", [](U16 K, int n_kv_head, int cap, int D, int n_tokens, int block_size) {
    std::vector<float> mn, mx;
    cuda_test::descriptors(K.data(), n_kv_head, cap, D, n_tokens, block_size, mn, mx);
    const size_t nbk = (n_tokens + block_size - 1) / block_size;
    return nb::make_tuple(numpy_array(std::move(mn), {(size_t)n_kv_head, nbk, (size_t)D}),
                          numpy_array(std::move(mx), {(size_t)n_kv_head, nbk, (size_t)D}));
  });
  t.def("select_blocks", [](F32 q, int n_head, U16 K, int n_kv_head, int cap, int D, int n_tokens, int block_size,
                            double ratio, int min_blocks, int local_blocks) {
    int n_sel = 0;
    auto r = cuda_test::select_blocks(q.data(), n_head, K.data(), n_kv_head, cap, D, n_tokens, block_size, ratio,
                                      min_blocks, local_blocks, n_sel);
    return numpy_array(std::move(r), {(size_t)n_kv_head, (size_t)n_sel});
  });
  t.def("select_blocks_steps", [](F32 q, int n_head, U16 K, int n_kv_head, int cap, int D, I32 n_tokens, int block_size,
                                  double ratio, int min_blocks, int local_blocks) {
    const int n_steps = (int)n_tokens.size();
    if (q.size() != (size_t)n_steps * n_head * D) throw std::invalid_argument("select_blocks_steps: q must be [steps][n_head][D]");
    auto r = cuda_test::select_blocks_steps(q.data(), n_steps, n_head, K.data(), n_kv_head, cap, D, n_tokens.data(),
                                            block_size, ratio, min_blocks, local_blocks);
    nb::list out;
    for (auto& v : r) {
      const size_t n_sel = v.size() / n_kv_head;
      out.append(numpy_array(std::move(v), {(size_t)n_kv_head, n_sel}));
    }
    return out;
  });
  t.def("set_select_kernels", &cuda_test::set_select_kernels, nb::arg("topn"), nb::arg("ctas") = 0,
        nb::arg("score_trigger") = false, nb::arg("stop") = 0, nb::arg("score_early_q") = true);
  t.def("argmax", [](F32 x, int ctas) { return cuda_test::argmax(x.data(), (int)x.size(), ctas); }, nb::arg("x"),
        nb::arg("ctas") = 0);
  t.def("top_candidates", [](F32 x, int k, I32 penalized, float penalty, bool want_sum) {
    double mx = 0, sum = 0;
    std::vector<int32_t> ids;
    auto vals = cuda_test::top_candidates(x.data(), (int)x.size(), k, penalized.data(), (int)penalized.size(), penalty,
                                          want_sum, ids, mx, sum);
    const size_t n = ids.size();
    return nb::make_tuple(numpy_array(std::move(ids), {n}), numpy_array(std::move(vals), {n}), mx, sum);
  });
  t.def("set_sparse_step_kernels", &cuda_test::set_sparse_step_kernels, nb::arg("decode_attention"),
        nb::arg("combine") = -1, nb::arg("shape") = -1);
  t.def("time_sparse_step", [](int n_tokens, int reps, int copies, int n_head, int n_kv_head, int D, bool select_only,
                               int cap_tokens, int sparse_splits) {
    nb::dict d;
    for (auto& kv : cuda_test::time_sparse_step(n_tokens, reps, copies, n_head, n_kv_head, D, select_only, cap_tokens,
                                                sparse_splits))
      d[kv.first.c_str()] = kv.second;
    return d;
  }, nb::arg("n_tokens"), nb::arg("reps") = 200, nb::arg("copies") = 4, nb::arg("n_head") = 28, nb::arg("n_kv_head") = 4,
     nb::arg("D") = 128, nb::arg("select_only") = false, nb::arg("cap_tokens") = 0, nb::arg("sparse_splits") = 0);
}

#endif
