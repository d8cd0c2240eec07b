// Bindings for ReSA's CPU operators (block descriptors, block selection, sparse attention):
// thin numpy-facing wrappers used by tests and benchmarks. The engine calls the C++ directly.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backends/cpu/attention_mass.h"
#include "backends/cpu/block_select.h"
#include "backends/cpu/causal_attention.h"
#include "backends/cpu/sparse_attention.h"
#include "engine/block_descriptors.h"

namespace nb = nanobind;
using namespace pyresa;

namespace {

using F32_1 = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32_2 = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using F32_3 = nb::ndarray<const float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using I32_2 = nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
// F16 data as numpy float16 or uint16 bits, any strides with contiguous rows.
using Half3 = nb::ndarray<nb::ro, nb::ndim<3>, nb::device::cpu>;

template <typename T>
using Owned = nb::ndarray<nb::numpy, T>;

template <typename T>
Owned<T> owned(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return Owned<T>(heap->data(), shape.size(), shape.begin(), owner);
}

// A [heads][tokens][D] half array as the KV cache layout: base pointer and byte strides.
struct HalfView {
  const fp16_t* data;
  size_t heads, tokens, D, nb1, nb2;
};

HalfView half_view(const Half3& a, const char* what) {
  const auto dt = a.dtype();
  const bool f16 = dt == nb::dlpack::dtype{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
  if (!f16 && dt != nb::dtype<uint16_t>()) throw std::invalid_argument(std::string(what) + ": expected float16 (or uint16 bits)");
  if (a.stride(2) != 1) throw std::invalid_argument(std::string(what) + ": rows (last axis) must be contiguous");
  if (a.stride(0) < 0 || a.stride(1) < 0) throw std::invalid_argument(std::string(what) + ": negative strides");
  return HalfView{static_cast<const fp16_t*>(a.data()), a.shape(0), a.shape(1), a.shape(2),
                  static_cast<size_t>(a.stride(1)) * 2, static_cast<size_t>(a.stride(0)) * 2};
}

// K and V in the operators' ggml layout (either operator's argument struct).
template <typename Args>
void set_kv(Args& a, const HalfView& k, const HalfView& v) {
  a.K = k.data;
  a.k_nb1 = k.nb1;
  a.k_nb2 = k.nb2;
  a.V = v.data;
  a.v_nb1 = v.nb1;
  a.v_nb2 = v.nb2;
}

cpu::ResaSelectParams select_params(int block_size, double ratio, int min_blocks, int local_blocks) {
  cpu::ResaSelectParams p;
  p.block_size = block_size;
  p.ratio = ratio;
  p.min_blocks = min_blocks;
  p.local_blocks = local_blocks;
  return p;
}

std::pair<Owned<float>, Owned<float>> layer_copy(const BlockDescriptors& bd, int layer) {
  const size_t H = bd.n_kv_heads(), B = bd.max_blocks(), D = bd.head_dim();
  std::vector<float> mn(H * B * D), mx(H * B * D);
  for (size_t h = 0; h < H; ++h)
    for (size_t b = 0; b < B; ++b)
      for (size_t d = 0; d < D; ++d) {
        mn[(h * B + b) * D + d] = bd.kmin(layer, (int)h, (int)b)[d];
        mx[(h * B + b) * D + d] = bd.kmax(layer, (int)h, (int)b)[d];
      }
  return {owned(std::move(mn), {H, B, D}), owned(std::move(mx), {H, B, D})};
}

struct AttentionCall {
  cpu::SparseAttentionArgs args;
  std::vector<float> out;
};

AttentionCall attention_call(const F32_2& q, const Half3& K, const Half3& V, int64_t n_kv, float scale, int block_size,
                             const I32_2& blocks) {
  const HalfView k = half_view(K, "K"), v = half_view(V, "V");
  const int n_q_heads = (int)q.shape(0), D = (int)q.shape(1);
  if (k.D != (size_t)D || v.D != (size_t)D) throw std::invalid_argument("sparse_attention: K/V head_dim differs from q");
  if (k.heads != v.heads || blocks.shape(0) != k.heads)
    throw std::invalid_argument("sparse_attention: K, V and blocks must have the same number of KV heads");
  if (n_kv < 0 || (size_t)n_kv > k.tokens || (size_t)n_kv > v.tokens)
    throw std::invalid_argument("sparse_attention: n_kv outside the K/V arrays");
  const int64_t n_sel = (int64_t)blocks.shape(1);
  for (size_t h = 0; h < blocks.shape(0); ++h) {
    const int32_t* row = blocks.data() + h * n_sel;
    for (int64_t i = 0; i < n_sel; ++i) {
      if (row[i] < 0 || (int64_t)row[i] * block_size >= (int64_t)k.tokens)
        throw std::invalid_argument("sparse_attention: block index out of range");
      for (int64_t j = 0; j < i; ++j)
        if (row[j] == row[i]) throw std::invalid_argument("sparse_attention: duplicate block index");
    }
  }
  AttentionCall c;
  c.out.assign((size_t)n_q_heads * D, 0.0f);
  auto& a = c.args;
  a.q = q.data();
  a.n_q_heads = n_q_heads;
  a.n_kv_heads = (int)k.heads;
  a.D = D;
  set_kv(a, k, v);
  a.n_kv = n_kv;
  a.scale = scale;
  a.block_size = block_size;
  a.blocks = blocks.data();
  a.n_sel = n_sel;
  a.out = c.out.data();
  if (n_q_heads % (int)k.heads != 0) throw std::invalid_argument("sparse_attention: n_q_heads must be a multiple of KV heads");
  return c;
}

// A sense-reversing spin barrier for the benchmark's threads.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void wait() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
    } else {
      while (gen_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Runs the op `iters` times on n_threads real threads (compute, barrier, reduce, barrier),
// as an engine's thread pool would. Returns seconds per call, thread start included once.
double run_threaded(const cpu::SparseAttentionArgs& a, int n_threads, int iters) {
  std::vector<float> ws(cpu::sparse_attention_workspace_floats(a.n_q_heads, a.n_kv_heads, a.D, n_threads));
  const bool need_reduce = cpu::sparse_attention_chunks(a.n_kv_heads, a.n_sel, n_threads) > 1;
  SpinBarrier barrier(n_threads);
  auto work = [&](int ith) {
    for (int i = 0; i < iters; ++i) {
      cpu::sparse_attention_compute(a, ith, n_threads, ws.data());
      if (need_reduce) {
        barrier.wait();
        cpu::sparse_attention_reduce(a, ith, n_threads, ws.data());
      }
      barrier.wait();
    }
  };
  std::vector<std::thread> pool;
  const auto t0 = std::chrono::steady_clock::now();
  for (int ith = 1; ith < n_threads; ++ith) pool.emplace_back(work, ith);
  work(0);
  for (auto& t : pool) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

}  // namespace

void bind_resa_ops(nb::module_& m) {
  m.def("resa_select_count", [](int64_t n_tokens, int block_size, double ratio, int min_blocks, int local_blocks) {
    return cpu::resa_select_count(n_tokens, select_params(block_size, ratio, min_blocks, local_blocks));
  }, nb::arg("n_tokens"), nb::arg("block_size"), nb::arg("ratio"), nb::arg("min_blocks"), nb::arg("local_blocks"),
     "n_sel: how many blocks ReSA attends to at this context length.");

  m.def("select_blocks", [](F32_2 q, F32_3 kmin, F32_3 kmax, int64_t n_tokens, int block_size, double ratio,
                            int min_blocks, int local_blocks, int n_kv_heads, int n_threads) {
    const int n_q_heads = (int)q.shape(0), D = (int)q.shape(1);
    if (kmin.shape(0) != (size_t)n_kv_heads || kmax.shape(0) != (size_t)n_kv_heads || kmin.shape(2) != (size_t)D ||
        kmax.shape(2) != (size_t)D || kmin.shape(1) != kmax.shape(1))
      throw std::invalid_argument("select_blocks: kmin/kmax must be [n_kv_heads, n_blocks, D]");
    const auto p = select_params(block_size, ratio, min_blocks, local_blocks);
    if ((size_t)cpu::resa_block_count(n_tokens, block_size) > kmin.shape(1))
      throw std::invalid_argument("select_blocks: fewer descriptor blocks than the context has");
    BlockDescriptorView view;
    view.kmin = kmin.data();
    view.kmax = kmax.data();
    view.block_stride = D;
    view.head_stride = (int64_t)kmin.shape(1) * D;
    const int64_t n_sel = cpu::resa_select_count(n_tokens, p);
    std::vector<int32_t> out((size_t)n_kv_heads * n_sel, -1);
    for (int ith = 0; ith < n_threads; ++ith)
      cpu::select_blocks(q.data(), n_q_heads, n_kv_heads, D, view, n_tokens, p, out.data(), ith, n_threads);
    return owned(std::move(out), {(size_t)n_kv_heads, (size_t)n_sel});
  }, nb::arg("q"), nb::arg("kmin"), nb::arg("kmax"), nb::arg("n_tokens"), nb::arg("block_size"), nb::arg("ratio"),
     nb::arg("min_blocks"), nb::arg("local_blocks"), nb::arg("n_kv_heads"), nb::arg("n_threads") = 1,
     "Selected blocks [n_kv_heads, n_sel], rows ascending. q: [n_q_heads, D]; kmin/kmax: [n_kv_heads, >=n_blocks, D].\n"
     "n_threads > 1 runs the (ith, nth) shares one after another.");

  m.def("block_attention_mass", [](F32_2 q, Half3 K, int64_t n_tokens, int block_size, float scale) {
    const HalfView k = half_view(K, "block_attention_mass: K");
    if (k.heads != 1 || (size_t)q.shape(1) != k.D || n_tokens < 0 || (size_t)n_tokens > k.tokens || block_size < 1)
      throw std::invalid_argument("block_attention_mass: q [group, D], K [1, >=n_tokens, D], block_size >= 1");
    std::vector<double> mass((size_t)cpu::resa_block_count(n_tokens, block_size));
    cpu::block_attention_mass(q.data(), (int)q.shape(0), (int)k.D, k.data, k.nb1, n_tokens, block_size, scale,
                              mass.data());
    return owned(std::move(mass), {mass.size()});
  }, nb::arg("q"), nb::arg("K"), nb::arg("n_tokens"), nb::arg("block_size"), nb::arg("scale"),
     "True softmax attention mass per block, mean over the query heads q [group, D]; K [1, tokens, D] F16.");

  m.def("select_blocks_by_mass", [](nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu> mass,
                                    int64_t n_sel, int64_t n_local) {
    const int64_t n_blocks = (int64_t)mass.shape(0);
    if (n_sel < 0 || n_sel > n_blocks || n_local < 0 || n_local > n_sel)
      throw std::invalid_argument("select_blocks_by_mass: need 0 <= n_local <= n_sel <= n_blocks");
    std::vector<int32_t> row((size_t)n_sel);
    cpu::select_blocks_by_mass(mass.data(), n_blocks, n_sel, n_local, row.data());
    return owned(std::move(row), {row.size()});
  }, nb::arg("mass"), nb::arg("n_sel"), nb::arg("n_local"),
     "The oracle selection: the last n_local blocks and the heaviest others, ascending.");

  nb::class_<BlockDescriptors>(m, "BlockDescriptors")
      .def(nb::init<int, int, int, int, int>(), nb::arg("n_layer"), nb::arg("n_kv_heads"), nb::arg("head_dim"),
           nb::arg("max_blocks"), nb::arg("block_size"))
      .def("refresh", [](BlockDescriptors& bd, int layer, int64_t first_token, int64_t n_tokens, Half3 K, int64_t n_valid) {
        const HalfView k = half_view(K, "K");
        if (k.heads != (size_t)bd.n_kv_heads() || k.D != (size_t)bd.head_dim())
          throw std::invalid_argument("refresh: K must be [n_kv_heads, n_ctx, head_dim]");
        if (n_valid > (int64_t)k.tokens) throw std::invalid_argument("refresh: n_valid past the K array");
        bd.refresh(layer, first_token, n_tokens, k.data, k.nb1, k.nb2, n_valid);
      }, nb::arg("layer"), nb::arg("first_token"), nb::arg("n_tokens"), nb::arg("K"), nb::arg("n_valid"))
      .def("append", [](BlockDescriptors& bd, int layer, int64_t token, F32_2 k) {
        if (k.shape(0) != (size_t)bd.n_kv_heads() || k.shape(1) != (size_t)bd.head_dim())
          throw std::invalid_argument("append: k must be [n_kv_heads, head_dim]");
        bd.append(layer, token, k.data());
      }, nb::arg("layer"), nb::arg("token"), nb::arg("k"))
      .def("kmin_kmax", [](const BlockDescriptors& bd, int layer) {
        if (layer < 0 || layer >= bd.n_layer()) throw std::out_of_range("layer out of range");
        return layer_copy(bd, layer);
      }, nb::arg("layer"), "Copies of (kmin, kmax), each [n_kv_heads, max_blocks, head_dim].")
      .def_prop_ro("bytes", &BlockDescriptors::bytes);

  m.def("block_descriptors_from_keys", [](Half3 K, int64_t n_valid, int block_size) {
    const HalfView k = half_view(K, "K");
    if (n_valid < 0 || n_valid > (int64_t)k.tokens) throw std::invalid_argument("n_valid outside K");
    const int64_t n_blocks = cpu::resa_block_count(n_valid, block_size);
    if (n_blocks == 0) throw std::invalid_argument("no valid tokens");
    BlockDescriptors bd(1, (int)k.heads, (int)k.D, (int)n_blocks, block_size);
    bd.refresh(0, 0, n_valid, k.data, k.nb1, k.nb2, n_valid);
    return layer_copy(bd, 0);
  }, nb::arg("K"), nb::arg("n_valid"), nb::arg("block_size"),
     "(kmin, kmax), each [n_kv_heads, ceil(n_valid / block_size), D], from K [n_kv_heads, n_ctx, D] float16.");

  m.def("sparse_attention", [](F32_2 q, Half3 K, Half3 V, int64_t n_kv, float scale, int block_size, I32_2 blocks,
                               int n_threads, bool threaded) {
    if (n_threads < 1) throw std::invalid_argument("n_threads must be >= 1");
    AttentionCall c = attention_call(q, K, V, n_kv, scale, block_size, blocks);
    const auto& a = c.args;
    {
      nb::gil_scoped_release release;
      if (threaded) {
        run_threaded(a, n_threads, 1);
      } else {
        std::vector<float> ws(cpu::sparse_attention_workspace_floats(a.n_q_heads, a.n_kv_heads, a.D, n_threads));
        for (int ith = 0; ith < n_threads; ++ith) cpu::sparse_attention_compute(a, ith, n_threads, ws.data());
        for (int ith = 0; ith < n_threads; ++ith) cpu::sparse_attention_reduce(a, ith, n_threads, ws.data());
      }
    }
    const size_t nq = a.n_q_heads, D = a.D;
    return owned(std::move(c.out), {nq, D});
  }, nb::arg("q"), nb::arg("K"), nb::arg("V"), nb::arg("n_kv"), nb::arg("scale"), nb::arg("block_size"),
     nb::arg("blocks"), nb::arg("n_threads") = 1, nb::arg("threaded") = false,
     "out [n_q_heads, D] = attention of q [n_q_heads, D] over the selected blocks [n_kv_heads, n_sel] of\n"
     "K, V [n_kv_heads, n_ctx, D] float16 (keys >= n_kv masked). n_threads > 1 runs the (ith, nth) shares\n"
     "one after another, then the reduce step; threaded=True runs them on real threads with barriers.");

  m.def("causal_attention", [](F32_3 q, Half3 K, Half3 V, int64_t pos0, float scale, int n_threads) {
    if (n_threads < 1) throw std::invalid_argument("n_threads must be >= 1");
    const HalfView k = half_view(K, "K"), v = half_view(V, "V");
    const size_t n = q.shape(0), n_q_heads = q.shape(1), D = q.shape(2);
    if (k.D != D || v.D != D) throw std::invalid_argument("causal_attention: K/V head_dim differs from q");
    if (k.heads != v.heads) throw std::invalid_argument("causal_attention: K and V have different KV heads");
    if (pos0 < 0 || (size_t)pos0 + n > k.tokens || (size_t)pos0 + n > v.tokens)
      throw std::invalid_argument("causal_attention: pos0 + n_queries outside the K/V arrays");
    std::vector<float> out(n * n_q_heads * D, 0.0f);
    cpu::CausalAttentionArgs a;
    a.q = q.data();
    a.n_queries = (int)n;
    a.n_q_heads = (int)n_q_heads;
    a.n_kv_heads = (int)k.heads;
    a.D = (int)D;
    set_kv(a, k, v);
    a.pos0 = pos0;
    a.scale = scale;
    a.out = out.data();
    {
      nb::gil_scoped_release release;
      cpu::causal_attention(a, n_threads);
    }
    return owned(std::move(out), {n, n_q_heads, D});
  }, nb::arg("q"), nb::arg("K"), nb::arg("V"), nb::arg("pos0"), nb::arg("scale"), nb::arg("n_threads") = 1,
     "out [n, n_q_heads, D]: query i of q [n, n_q_heads, D] at position pos0 + i attends to keys\n"
     "[0, pos0 + i] of K, V [n_kv_heads, n_ctx, D] float16. n_threads sets the tiling (the work\n"
     "items run one after another on the calling thread).");

  m.def("sparse_attention_chunks", &cpu::sparse_attention_chunks, nb::arg("n_kv_heads"), nb::arg("n_sel"), nb::arg("nth"));

  m.def("bench_sparse_attention", [](F32_2 q, Half3 K, Half3 V, int64_t n_kv, float scale, int block_size,
                                     I32_2 blocks, int n_threads, int iters) {
    if (n_threads < 1 || iters < 1) throw std::invalid_argument("n_threads and iters must be >= 1");
    AttentionCall c = attention_call(q, K, V, n_kv, scale, block_size, blocks);
    nb::gil_scoped_release release;
    return run_threaded(c.args, n_threads, iters);
  }, nb::arg("q"), nb::arg("K"), nb::arg("V"), nb::arg("n_kv"), nb::arg("scale"), nb::arg("block_size"),
     nb::arg("blocks"), nb::arg("n_threads"), nb::arg("iters"),
     "Seconds per call on n_threads real threads (compute, barrier, reduce, barrier), thread start included once.");
}
