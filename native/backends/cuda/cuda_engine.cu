// The GPU engine: the forward pass written once over the CUDA ops (quant.cuh, gemm.cuh,
// attention.cuh, resa.cuh, ops.cuh), the ReSA schedule, and decode-step graph capture.
#include "engine/cuda_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

#include "backends/cpu/block_select.h"
#include "backends/cuda/attention.cuh"
#include "backends/cuda/attention_decode.cuh"
#include "backends/cuda/common.cuh"
#include "backends/cuda/gemm.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/matmul_mma.cuh"
#include "backends/cuda/matvec_bulk.cuh"
#include "backends/cuda/matvec_mma.cuh"
#include "backends/cuda/ops.cuh"
#include "backends/cuda/quant.cuh"
#include "backends/cuda/resa.cuh"
#include "backends/cuda/sampling.cuh"
#include "engine/errors.h"

namespace pyresa {

using namespace cuda;

bool cuda_runtime_available() { return cuda_device_count() > 0; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp p{};
  PYRESA_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

namespace {

constexpr int kMaxDecodeSplits = 256;
constexpr size_t kAttnWorkBytes = size_t(64) << 20;
constexpr int64_t kDequantScratchElems = int64_t(64) << 20;  // F16 weights per GEMM slice

int env_int(const char* name, int def) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : def;
}

// "old" (or 0): the general attention kernel; 1-4: that variant of the batched one (4, the wgmma
// kernel, falls back to 3 where it is unavailable: see the engine's constructor). Until run 12 this
// took 1-3 only, so "4" silently meant the general kernel: run 11's "variant 4 in the engine"
// figures were the general kernel's (docs/perf-cuda.md, run 12-attn12).
int kernel_switch(const char* name, int def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  if (std::string(v) == "old") return 0;
  const int k = std::atoi(v);
  return k >= 1 && k <= 4 ? k : 0;
}

int pow2_floor(int x) {
  int p = 1;
  while (p * 2 <= x) p *= 2;
  return p;
}

struct LayerDev {
  DeviceWeight attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
};

enum class StepKind { Prefill, Decode, SparseDecode, Rectify };

}  // namespace

struct CudaEngine::Impl {
  ModelConfig c;
  CudaEngineOptions opt;
  int device = 0;
  int n_sm = 132;
  cudaStream_t stream = nullptr;

  DeviceBuffer weights_buf;
  DeviceWeight token_embd, output_norm, output;
  std::vector<LayerDev> layers;

  int cap = 0;  // KV capacity in tokens (n_ctx rounded up, plus a tile of slack)
  DeviceBuffer k_cache, v_cache, desc;
  DescLayout desc_layout;
  int64_t head_stride = 0, layer_stride = 0;

  // activations
  int nb = 0;  // rows per forward (n_batch, at least rectify_every + 1)
  DeviceBuffer x, q, k, v, attn, gate, up, act, wdeq, logits_all, logits1, attn_work, keys, blocks, small_ws;
  // One-token gate+up with the SwiGLU quantization in its epilogue (PYRESA_CUDA_GLU_EPILOGUE):
  // the down product's input row and the per-block completion counters (zero between launches).
  DeviceBuffer act_glu, glu_counters;
  // The decode attention's in-kernel combine counters (PYRESA_CUDA_DECODE_COMBINE=1; zeroed once).
  DeviceBuffer attn_sync;
  bool glu_epilogue = false;  // slower on the H100 (run 10-fixed-fuse): off by default
  size_t act_rb_max = 0;
  int logits_rows = 0;  // rows logits_all holds
  DeviceBuffer ints;    // pos, n_sel, argmax out, tokens [nb]
  DeviceBuffer argmax_mem;  // the multi-CTA argmax's workspace (PYRESA_CUDA_ARGMAX_CTAS, 0: one CTA)
  ArgmaxScratch argmax_sc;
  int* d_pos = nullptr;
  int* d_nsel = nullptr;
  int32_t* d_argmax = nullptr;
  int32_t* d_tokens = nullptr;
  DeviceBuffer history;  // token at each position (device), for rectification and greedy loops
  // Sampling candidates (allocated on first use): penalized copy of the logits, penalized ids,
  // candidate ids, logits and the (max, sum) pair.
  DeviceBuffer samp_work, samp_penalized, samp_out;
  int32_t* h_pinned = nullptr;  // pinned staging for tokens and positions
  int h_pinned_n = 0;

  int n_past = 0;
  int sparse_steps = 0;  // sparse decode steps since the last dense pass
  AttentionSettings att;
  AttentionStats st;
  float theta_scale = 1.0f;
  int gemm_min_tokens = 65;
  // Batched products (prefill, more than 64 tokens) take F16 activations; where one overflowed
  // (f16_overflow, set by prepare_activations) the chunk is redone 64 tokens at a time with
  // q8_only, on the int8 path with the CPU's Q8_K activations (run 13: a 100-token prompt of the
  // 7B benchmark model gave NaN logits on the GPU only: its FFN inputs pass 65504).
  bool q8_only = false;
  DeviceBuffer f16_overflow;
  int matvec_max_tokens = 8;
  // One-token products that quantize their own input (matvec_rows_prep, no prepare kernel), by
  // product: PYRESA_CUDA_FUSE_NORM bits kFold* (docs/perf-cuda.md, run 10-fixed-fuse: slower on
  // the H100, off by default).
  int fold_prep = 0;
  // One-token q, k and v in one launch also when v has another type (Q4_K_M: Q6_K v), v's CTAs
  // first (PYRESA_CUDA_QKV_ONE: 0 off, 1 in q, k, v order, 3 v first, the default: fastest in
  // run 10-fixed-fuse; 2, a 5-CTAs-per-SM build of the kernel, measured as 1 and was removed).
  bool qkv_one = true;
  bool qkv_v_first = true;
  bool precise_dense = true;
  bool rect_precise = false;
  // Dense attention of many rows (attention_batched.cu) variant, 0 = the general kernel:
  // PYRESA_CUDA_RECT_KERNEL / PYRESA_CUDA_PREFILL_KERNEL = old | 1-4. Default 4, the wgmma kernel
  // (sm_90a, attention_wgmma.cu; run 12-attn12: the fastest in the engine for both), 3 (two
  // 128-row CTAs per SM on mma.sync, run 9-rect-attn) where it is unavailable.
  int rect_kernel = 4;
  int prefill_kernel = 4;

  // Graph cache: (kind, attention splits) -> executable graph.
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs;

  // Step profiler (profile_step): events between the ops of one eager step, time per label.
  bool prof_on = false;
  std::vector<std::pair<std::string, cudaEvent_t>> prof_marks;
  void mark(const char* label) {
    if (!prof_on) return;
    cudaEvent_t e;
    PYRESA_CUDA_CHECK(cudaEventCreate(&e));
    PYRESA_CUDA_CHECK(cudaEventRecord(e, stream));
    prof_marks.emplace_back(label, e);
  }

  // Activation reuse within a layer: what `act` currently holds.
  const void* act_src = nullptr;
  GgmlType act_fmt = GgmlType::Q8_K;
  int act_rows = -1;

  ~Impl() {
    for (auto& g : graphs) cudaGraphExecDestroy(g.second);
    if (h_pinned) cudaFreeHost(h_pinned);
    if (stream) cudaStreamDestroy(stream);
  }

  // ---- setup -----------------------------------------------------------------------------

  void upload(const ModelWeights& w) {
    // One allocation for every tensor; tied embeddings share one upload.
    std::map<const void*, size_t> offsets;
    size_t total = 0;
    auto plan = [&](const WeightView& v) {
      if (!v.present() || offsets.count(v.data)) return;
      offsets[v.data] = total;
      total += (device_weight_bytes(v.type, v.rows, v.cols) + 255) & ~size_t(255);
    };
    plan(w.token_embd);
    plan(w.output_norm);
    plan(w.output);
    for (const auto& L : w.layers)
      for (const WeightView* v : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv, &L.ffn_norm,
                                  &L.w_gate, &L.w_up, &L.w_down})
        plan(*v);
    weights_buf = DeviceBuffer(total, "model weights");
    std::map<const void*, DeviceWeight> done;
    auto up = [&](const WeightView& v) -> DeviceWeight {
      if (!v.present()) return DeviceWeight{};
      auto it = done.find(v.data);
      if (it != done.end()) return it->second;
      DeviceWeight d = upload_weight(v.type, v.rows, v.cols, v.data, weights_buf.get<uint8_t>() + offsets[v.data]);
      done[v.data] = d;
      return d;
    };
    token_embd = up(w.token_embd);
    output_norm = up(w.output_norm);
    output = up(w.output);
    for (const auto& L : w.layers) {
      LayerDev d;
      d.attn_norm = up(L.attn_norm);
      d.wq = up(L.wq);
      d.wk = up(L.wk);
      d.wv = up(L.wv);
      d.wo = up(L.wo);
      d.bq = up(L.bq);
      d.bk = up(L.bk);
      d.bv = up(L.bv);
      d.ffn_norm = up(L.ffn_norm);
      d.w_gate = up(L.w_gate);
      d.w_up = up(L.w_up);
      d.w_down = up(L.w_down);
      layers.push_back(d);
    }
  }

  void check_types() {
    auto ok = [](const DeviceWeight& w) { (void)act_type_for(w.type); };
    ok(token_embd);
    ok(output);
    for (auto& L : layers)
      for (const DeviceWeight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) ok(*w);
  }

  void allocate_desc() {
    desc_layout.n_layer = c.n_layer;
    desc_layout.n_kv_head = c.n_head_kv;
    desc_layout.D = c.head_dim;
    desc_layout.block_size = att.block_size;
    desc_layout.max_blocks = ((cap + att.block_size - 1) / att.block_size + 31) / 32 * 32;
    desc = DeviceBuffer(desc_layout.elems() * sizeof(__half), "ReSA block descriptors");
    PYRESA_CUDA_CHECK(cudaMemset(desc.get(), 0, desc.bytes()));
    keys = DeviceBuffer(select_scratch_bytes(desc_layout), "block selection keys");
    select_cluster_size(desc_layout);  // device queries, outside any graph capture
    blocks = DeviceBuffer((size_t)c.n_head_kv * desc_layout.max_blocks * 4, "selected blocks");
  }

  void allocate(int n_ctx) {
    const int64_t E = c.n_embd, QD = (int64_t)c.n_head * c.head_dim, KVD = (int64_t)c.n_head_kv * c.head_dim;
    const int64_t FF = c.n_ff;
    cap = (n_ctx + 63) / 64 * 64 + 64;
    head_stride = (int64_t)cap * c.head_dim;
    layer_stride = head_stride * c.n_head_kv;
    // Check the big allocation up front, so the error names the total.
    const size_t kv = 2 * (size_t)c.n_layer * layer_stride * sizeof(__half);
    size_t free_b = 0, total_b = 0;
    PYRESA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (kv > free_b)
      throw DeviceMemoryError("CUDA out of memory: the KV cache for n_ctx " + std::to_string(n_ctx) + " needs " +
                              mib(kv) + ", device " + std::to_string(device) + " has " + mib(free_b) + " free of " +
                              mib(total_b) + " (after " + mib(weights_buf.bytes()) + " of weights)");
    k_cache = DeviceBuffer(kv / 2, "KV cache (keys)");
    v_cache = DeviceBuffer(kv / 2, "KV cache (values)");
    // Zeroed once: attention tiles may read (masked) slots nothing has written; they must be finite.
    PYRESA_CUDA_CHECK(cudaMemset(k_cache.get(), 0, k_cache.bytes()));
    PYRESA_CUDA_CHECK(cudaMemset(v_cache.get(), 0, v_cache.bytes()));
    allocate_desc();

    nb = std::max(opt.n_batch, 64);
    const size_t f = sizeof(float);
    x = DeviceBuffer(nb * E * f, "activations");
    q = DeviceBuffer(nb * QD * f, "activations");
    k = DeviceBuffer(nb * KVD * f, "activations");
    v = DeviceBuffer(nb * KVD * f, "activations");
    attn = DeviceBuffer(nb * QD * f, "activations");
    gate = DeviceBuffer(nb * FF * f, "activations");
    up = DeviceBuffer(nb * FF * f, "activations");
    for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K})
      for (int64_t cols : {E, QD, FF}) {
        if ((t == GgmlType::Q8_K && cols % 256) || cols % 32) continue;
        act_rb_max = std::max(act_rb_max, act_row_bytes(t, cols));
      }
    act = DeviceBuffer(nb * act_rb_max, "quantized activations");
    int64_t max_w = 0;
    for (auto& L : layers)
      for (const DeviceWeight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
        max_w = std::max(max_w, w->rows * w->cols);
    max_w = std::max(max_w, std::min(output.rows * output.cols, kDequantScratchElems));
    wdeq = DeviceBuffer(std::min(max_w, std::max(kDequantScratchElems, max_w)) * sizeof(__half), "GEMM weight scratch");
    logits1 = DeviceBuffer(c.n_vocab * f, "logits");
    attn_work = DeviceBuffer(kAttnWorkBytes, "attention workspace");
    attn_sync = DeviceBuffer(sizeof(unsigned) * cuda::attention_sync_words(c.n_head_kv), "attention combine counters");
    PYRESA_CUDA_CHECK(cudaMemset(attn_sync.get(), 0, attn_sync.bytes()));
    small_ws = DeviceBuffer(size_t(32) << 20, "split-K workspace");
    if (FF % QK_K == 0) {
      act_glu = DeviceBuffer(act_row_bytes(GgmlType::Q8_K, FF), "quantized activations");
      glu_counters = DeviceBuffer(sizeof(int) * (FF / QK_K), "gate+up block counters");
      PYRESA_CUDA_CHECK(cudaMemset(glu_counters.get(), 0, glu_counters.bytes()));
    }
    f16_overflow = DeviceBuffer(sizeof(int), "F16 overflow flag");
    PYRESA_CUDA_CHECK(cudaMemset(f16_overflow.get(), 0, sizeof(int)));
    ints = DeviceBuffer((4 + nb) * sizeof(int32_t), "positions");
    d_pos = ints.get<int>();
    d_nsel = d_pos + 1;
    d_argmax = d_pos + 2;
    d_tokens = d_pos + 4;
    PYRESA_CUDA_CHECK(cudaMemset(ints.get(), 0, ints.bytes()));
    {
      const int ctas = std::max(1, env_int("PYRESA_CUDA_ARGMAX_CTAS", n_sm));
      argmax_mem = DeviceBuffer(argmax_scratch_bytes(ctas), "argmax workspace");
      argmax_sc = argmax_scratch(argmax_mem.get(), ctas);
    }
    history = DeviceBuffer((size_t)(cap + 1) * sizeof(int32_t), "token history");
    PYRESA_CUDA_CHECK(cudaMemset(history.get(), 0, history.bytes()));
    h_pinned_n = nb + 8;
    PYRESA_CUDA_CHECK(cudaMallocHost(&h_pinned, h_pinned_n * sizeof(int32_t)));
  }

  // ---- pieces of the forward ---------------------------------------------------------------

  // Products of n tokens: up to matvec_max_tokens by the integer matvec (Q8 activations, the
  // CPU's arithmetic); up to 64 by dequantize-and-multiply in shared memory (weights read once);
  // beyond, by dequantizing slices to F16 and the tiled tensor-core GEMM.
  enum class Path { Matvec, Small, Gemm };
  static constexpr int kFoldQkv = 1, kFoldO = 2, kFoldGateUp = 4, kFoldLmHead = 8;
  Path path_for(const DeviceWeight& w, int n) const {
    if (n <= matvec_max_tokens || w.cols % 32) return Path::Matvec;
    return n <= 64 && (n < gemm_min_tokens || q8_only) ? Path::Small : Path::Gemm;
  }

  // Several products of the same input in one launch when they can share it (decode: q, k, v;
  // gate, up); otherwise one linear() each.
  struct LinearOut {
    const DeviceWeight* w;
    float* y;
    int64_t ldy;
    const DeviceWeight* bias;
    bool accumulate = false;
  };

  // The activations f(src) of n rows in format fmt in `act` (f described by `prep`), prepared
  // only when the last ones were of another source, format or row count: consecutive products of
  // the same input reuse one quantization. Returns the bytes per row.
  size_t activations(const ActPrep& prep, const void* src_id, GgmlType fmt, int n, int64_t cols) {
    const size_t rb = act_row_bytes(fmt, cols);
    if (act_src != src_id || act_fmt != fmt || act_rows != n) {
      ActPrep p = prep;
      if (fmt == GgmlType::F16) p.f16_overflow = f16_overflow.get<int>();
      prepare_activations(p, fmt, n, cols, act.get(), rb, stream);
      act_src = src_id;
      act_fmt = fmt;
      act_rows = n;
    }
    return rb;
  }

  // y[n][w.rows] (+)= W . f(src) where f is described by `prep`; src identifies the activation
  // source so consecutive products of the same input reuse one quantization.
  void linear(const DeviceWeight& w, const ActPrep& prep, const void* src_id, int n, float* y, int64_t ldy,
              const DeviceWeight* bias, bool accumulate, int fold_bit = 0) {
    if (n == 1 && fold_bit) {
      const LinearOut o{&w, y, ldy, bias, accumulate};
      if (one_token(&o, 1, prep, src_id, fold_bit)) return;
    }
    const Path path = path_for(w, n);
    const float* b = bias && bias->present() ? reinterpret_cast<const float*>(bias->data) : nullptr;
    // A few tokens of Q4_K / Q6_K weights on the int8 tensor cores (Q8_K activations, the CPU's
    // integers) where PYRESA_CUDA_SMALL_MMQ is on; F16 dequantize-and-multiply otherwise.
    if (path == Path::Small && matmul_mma(w, nullptr, 0, n, y, ldy, b, accumulate, n_sm, nullptr, 0, stream, true)) {
      const GgmlType qf = act_type_for(w.type);
      const size_t qrb = activations(prep, src_id, qf, n, w.cols);
      if (matmul_mma(w, act.get(), qrb, n, y, ldy, b, accumulate, n_sm, small_ws.get<float>(),
                     small_ws.bytes() / sizeof(float), stream))
        return;
    }
    const GgmlType fmt = path != Path::Matvec ? GgmlType::F16 : act_type_for(w.type);
    const size_t rb = activations(prep, src_id, fmt, n, w.cols);
    if (path == Path::Small) {
      dequant_matmul_small(w, act.get<__half>(), rb / 2, n, y, ldy, b, accumulate, n_sm, small_ws.get<float>(),
                           small_ws.bytes() / sizeof(float), stream);
      return;
    }
    if (path == Path::Matvec) {
      MatvecOut o;
      o.y = y;
      o.ldy = ldy;
      o.bias = b;
      o.accumulate = accumulate;
      matvec(w, act.get(), rb, n, o, stream);
      return;
    }
    const int64_t slice = std::max<int64_t>(128, (int64_t)(wdeq.bytes() / sizeof(__half)) / w.cols / 128 * 128);
    for (int64_t r0 = 0; r0 < w.rows; r0 += slice) {
      const int64_t nr = std::min(slice, w.rows - r0);
      dequantize_rows_f16(w, r0, nr, wdeq.get<__half>(), stream);
      gemm_f16(act.get<__half>(), rb / 2, wdeq.get<__half>(), w.cols, y + r0, ldy, n, (int)nr, (int)w.cols,
               b ? b + r0 : nullptr, accumulate, stream);
    }
  }

  // The products' weights and outputs as the matvec kernels take them (at most 3).
  static void to_matvec(const LinearOut* outs, int n_out, DeviceWeight* ws, MatvecOut* os) {
    for (int i = 0; i < n_out; ++i) {
      ws[i] = *outs[i].w;
      os[i].y = outs[i].y;
      os[i].ldy = outs[i].ldy;
      os[i].bias = outs[i].bias && outs[i].bias->present() ? reinterpret_cast<const float*>(outs[i].bias->data) : nullptr;
      os[i].accumulate = outs[i].accumulate;
    }
  }

  // One token through matvec_rows_prep where it applies: with the input's preparation folded
  // into the product (fold_bit set in fold_prep), or weights of two types in one launch.
  // Returns false (nothing done) otherwise.
  bool one_token(const LinearOut* outs, int n_out, const ActPrep& prep, const void* src_id, int fold_bit) {
    bool mixed = false;
    for (int i = 1; i < n_out; ++i) mixed = mixed || outs[i].w->type != outs[0].w->type;
    const bool fold = (fold_prep & fold_bit) != 0;
    if (!fold && !mixed) return false;
    DeviceWeight ws[3];
    MatvecOut os[3];
    to_matvec(outs, n_out, ws, os);
    if (fold && matvec_rows_prep(ws, os, n_out, &prep, nullptr, stream)) {
      act_src = nullptr;  // the activation buffer was not written
      return true;
    }
    if (!mixed || !matvec_rows_prep(ws, os, n_out, nullptr, act.get(), stream, /*dry_run=*/true)) return false;
    const GgmlType fmt = act_type_for(ws[0].type);
    const size_t rb = activations(prep, src_id, fmt, 1, ws[0].cols);
    return matvec_rows_prep(ws, os, n_out, nullptr, act.get(), stream);
  }

  void linear_multi(const LinearOut* outs, int n_out, const ActPrep& prep, const void* src_id, int n, int fold_bit = 0) {
    if (n == 1 && one_token(outs, n_out, prep, src_id, fold_bit)) return;
    bool same = path_for(*outs[0].w, n) == Path::Matvec;
    for (int i = 1; i < n_out; ++i)
      same = same && outs[i].w->type == outs[0].w->type && outs[i].w->cols == outs[0].w->cols;
    if (!same || env_int("PYRESA_CUDA_FUSE", 1) == 0) {
      for (int i = 0; i < n_out; ++i) linear(*outs[i].w, prep, src_id, n, outs[i].y, outs[i].ldy, outs[i].bias, false);
      return;
    }
    const DeviceWeight& w0 = *outs[0].w;
    const GgmlType fmt = act_type_for(w0.type);
    const size_t rb = activations(prep, src_id, fmt, n, w0.cols);
    DeviceWeight ws[3];
    MatvecOut os[3];
    to_matvec(outs, n_out, ws, os);
    matvec_multi(ws, os, n_out, act.get(), rb, n, stream);
  }

  // One token's FFN with the SwiGLU + quantize in gate+up's epilogue (matvec_gate_up_glu), then
  // down on that row: no SwiGLU prepare kernel. False (nothing done) where it does not apply.
  bool ffn_one_token(const LayerDev& L, const ActPrep& norm2, float* X) {
    if (!glu_epilogue || !act_glu.get() || (fold_prep & kFoldGateUp)) return false;
    const GgmlType fmt = act_type_for(L.w_gate.type);
    if (fmt != GgmlType::Q8_K || act_type_for(L.w_down.type) != GgmlType::Q8_K || L.w_down.cols != L.w_gate.rows ||
        !matvec_gate_up_glu(L.w_gate, L.w_up, gate.get<float>(), up.get<float>(), nullptr, nullptr, nullptr, stream,
                            /*dry_run=*/true))
      return false;
    const int64_t E = c.n_embd, FF = c.n_ff;
    activations(norm2, &L.ffn_norm, fmt, 1, L.w_gate.cols);
    matvec_gate_up_glu(L.w_gate, L.w_up, gate.get<float>(), up.get<float>(), act.get(), glu_counters.get<int>(),
                       act_glu.get(), stream);
    MatvecOut o;
    o.y = X;
    o.ldy = E;
    o.accumulate = true;
    matvec(L.w_down, act_glu.get(), act_row_bytes(GgmlType::Q8_K, FF), 1, o, stream);
    return true;
  }

  int attention_splits(int n_rows_per_head, int n_tiles, bool graph) const {
    // One token (decode, dense or sparse) on the decode kernel: one wave of its CTAs.
    if (const int ds = cuda::decode_attention_splits(1, n_rows_per_head * c.n_head_kv, c.n_head_kv, c.head_dim,
                                                     n_tiles, n_sm)) {
      const size_t per_split = (size_t)c.n_head_kv * n_rows_per_head * (c.head_dim + 2) * sizeof(float);
      return std::max(1, std::min({ds, kMaxDecodeSplits, (int)(kAttnWorkBytes / per_split)}));
    }
    const int nw = n_rows_per_head <= 16 ? 1 : n_rows_per_head <= 64 ? 4 : n_rows_per_head <= 128 ? 8 : 16;
    const int row_tiles = (n_rows_per_head + 16 * nw - 1) / (16 * nw);
    const int base = row_tiles * c.n_head_kv;
    // One-warp CTAs (decode) need many in flight per SM to keep enough loads going.
    const int target = nw == 1 ? 8 * n_sm : 3 * n_sm;
    int s = std::max(1, (target + base - 1) / base);
    s = std::min(s, std::max(1, n_tiles / 4));
    const size_t per_split = (size_t)c.n_head_kv * n_rows_per_head * (c.head_dim + 2) * sizeof(float);
    s = std::min<int>(s, (int)(kAttnWorkBytes / per_split));
    s = std::min(s, kMaxDecodeSplits);
    (void)graph;
    return pow2_floor(std::max(1, s));
  }

  // Splits of the last layer's one-row attention over n_keys keys in a forward of several tokens
  // of which only the last row's logits are wanted (see `tail` in forward).
  int tail_attention_splits(int n_keys) const {
    return attention_splits(c.n_head / c.n_head_kv, (n_keys + 31) / 32, true);
  }

  // The batched kernel's variant for a dense forward of n_tok tokens, 0 = the general kernel.
  int batched_variant(StepKind kind, int n_tok) const {
    if (n_tok * (c.n_head / c.n_head_kv) < 64) return 0;
    if (kind == StepKind::Rectify) return rect_kernel;
    if (kind == StepKind::Prefill) return prefill_kernel;
    return 0;
  }

  // Attention splits for a dense forward of n_tok tokens over n_keys keys (rectification, prefill).
  int dense_splits(StepKind kind, int n_tok, int n_keys, bool graph) const {
    const int rows = n_tok * (c.n_head / c.n_head_kv);
    const int v = batched_variant(kind, n_tok);
    if (!v) return attention_splits(rows, (n_keys + 31) / 32, graph);
    int s = cuda::attention_batched_splits(n_tok, c.n_head, c.n_head_kv, n_keys, n_sm, v);
    const size_t per_split = (size_t)c.n_head_kv * rows * (c.head_dim + 2) * sizeof(float);
    s = std::min<int>(s, (int)(kAttnWorkBytes / per_split));
    s = std::min(s, kMaxDecodeSplits);
    return std::max(1, s);
  }

  // One forward of n tokens whose ids are at d_tokens, at positions *d_pos + pos_offset ...
  // Writes the logits of the last row (or all rows) to `logits` (device), if not null.
  void forward(int n, int pos_offset, StepKind kind, int splits, float* logits, bool all_logits) {
    const int64_t E = c.n_embd, QD = (int64_t)c.n_head * c.head_dim, KVD = (int64_t)c.n_head_kv * c.head_dim;
    const int64_t FF = c.n_ff;
    float* X = x.get<float>();
    act_src = nullptr;
    mark("start");
    dequantize_rows_f32(token_embd, d_tokens, n, X, E, stream);
    mark("embed");
    cuda::ResaParams rp;
    rp.block_size = att.block_size;
    rp.ratio = att.ratio;
    rp.min_blocks = att.min_blocks;
    rp.local_blocks = att.local_blocks;
    const float scale = 1.0f / std::sqrt((float)c.head_dim);
    const int tail_splits = tail_attention_splits(n_past + n + pos_offset);
    for (int l = 0; l < c.n_layer; ++l) {
      const LayerDev& L = layers[l];
      __half* Kl = k_cache.get<__half>() + l * layer_stride;
      __half* Vl = v_cache.get<__half>() + l * layer_stride;
      ActPrep norm1;
      norm1.transform = ActTransform::RmsNorm;
      norm1.x = X;
      norm1.ld_x = E;
      norm1.norm_w = reinterpret_cast<const float*>(L.attn_norm.data);
      norm1.eps = c.rms_eps;
      const LinearOut qkv[3] = {{&L.wq, q.get<float>(), QD, &L.bq},
                                {&L.wk, k.get<float>(), KVD, &L.bk},
                                {&L.wv, v.get<float>(), KVD, &L.bv}};
      if (n == 1 && qkv_v_first && L.wv.type != L.wq.type && L.wk.type == L.wq.type) {
        // v's heavier Q6_K CTAs first: the partial second wave is then light Q4_K items
        const LinearOut vqk[3] = {qkv[2], qkv[0], qkv[1]};
        linear_multi(vqk, 3, norm1, &L.attn_norm, n, kFoldQkv);
      } else if (L.wv.type == L.wq.type || (n == 1 && qkv_one && L.wk.type == L.wq.type)) {
        linear_multi(qkv, 3, norm1, &L.attn_norm, n, kFoldQkv);
      } else {  // e.g. Q4_K_M: v in Q6_K
        linear_multi(qkv, 2, norm1, &L.attn_norm, n, kFoldQkv);
        linear_multi(qkv + 2, 1, norm1, &L.attn_norm, n, kFoldQkv);
      }
      mark("qkv (norm + products)");

      RopeStoreArgs r;
      r.q = q.get<float>();
      r.k = k.get<float>();
      r.v = v.get<float>();
      r.n = n;
      r.n_head = c.n_head;
      r.n_kv_head = c.n_head_kv;
      r.D = c.head_dim;
      r.theta_scale = theta_scale;
      r.neox = c.rope_neox;
      r.pos_dev = d_pos;
      r.pos_offset = pos_offset;
      r.K = Kl;
      r.V = Vl;
      r.head_stride = head_stride;
      const bool single = kind == StepKind::Decode || kind == StepKind::SparseDecode;
      if (single) {
        r.desc = desc.get<__half>();
        r.desc_layout = desc_layout;
        r.layer = l;
      }
      rope_store(r, stream);
      if (!single)
        refresh_descriptors(desc.get<__half>(), desc_layout, l, Kl, head_stride, d_pos, pos_offset, n, stream);
      mark("rope + kv store + descriptors");

      // The last layer's K/V are stored above; what follows only feeds the logits. With none
      // wanted (a prefill chunk before the last) it is skipped, and with only the last row's
      // wanted it runs for that row alone (as llama.cpp's output-row selection): 1/n_layer of a
      // prefill or a rectification less work.
      const bool tail = l == c.n_layer - 1 && n > 1 && !all_logits;
      if (tail && !logits) break;
      const int r0 = tail ? n - 1 : 0, nr = n - r0;
      float* Xr = X + r0 * E;

      AttentionArgs a;
      a.q = q.get<float>() + r0 * QD;
      a.q_stride = QD;
      a.out = attn.get<float>() + r0 * QD;
      a.out_stride = QD;
      a.K = Kl;
      a.V = Vl;
      a.head_stride = head_stride;
      a.n_tok = nr;
      a.n_head = c.n_head;
      a.n_kv_head = c.n_head_kv;
      a.D = c.head_dim;
      a.pos_dev = d_pos;
      a.pos_offset = pos_offset + r0;
      a.block_size = att.block_size;
      a.scale = scale;
      a.n_splits = tail ? tail_splits : splits;
      a.work = attn_work.get<float>();
      a.sync = attn_sync.get<unsigned>();
      // Decode steps keep the query and probabilities at ~F32 (two-term F16), as the CPU's
      // attention. Prefill and rectification are plain F16, as llama.cpp's flash attention: the
      // rectification re-reads the whole cache for 33 rows, and two-term F16 cost it 2.9 % of
      // ReSA@256K (run 12) while moving the logits no more than a reordering does (run 11);
      // PYRESA_CUDA_RECT_PRECISE=1 brings the two-term form back.
      a.precise = (kind == StepKind::Rectify && rect_precise) || kind == StepKind::SparseDecode ||
                  (kind == StepKind::Decode && precise_dense);
      // The CPU engine attends with an F32 query everywhere (its sparse operator); decode and
      // rectification here keep the query at ~F32 too.
      a.split_query = kind == StepKind::SparseDecode || (kind == StepKind::Decode && precise_dense) ||
                      (kind == StepKind::Rectify && rect_precise);
      if (kind == StepKind::SparseDecode) {
        select_blocks(q.get<float>(), c.n_head, desc.get<__half>(), desc_layout, l, rp, d_pos, keys.get<uint32_t>(),
                      blocks.get<int32_t>(), desc_layout.max_blocks, d_nsel, stream);
        a.blocks = blocks.get<int32_t>();
        a.blocks_stride = desc_layout.max_blocks;
        a.n_sel_dev = d_nsel;
        mark("block selection");
      }
      if (const int v = batched_variant(kind, nr)) cuda::attention_batched(a, v, stream);
      else cuda::attention(a, stream);
      mark("attention");

      ActPrep plain;
      plain.x = a.out;
      plain.ld_x = QD;
      linear(L.wo, plain, a.out, nr, Xr, E, nullptr, true, kFoldO);
      mark("output projection");

      ActPrep norm2;
      norm2.transform = ActTransform::RmsNorm;
      norm2.x = Xr;
      norm2.ld_x = E;
      norm2.norm_w = reinterpret_cast<const float*>(L.ffn_norm.data);
      norm2.eps = c.rms_eps;
      if (nr == 1 && ffn_one_token(L, norm2, Xr)) {
        mark("gate + up + SwiGLU quantize, down");
        continue;
      }
      const LinearOut gu[2] = {{&L.w_gate, gate.get<float>(), FF, nullptr}, {&L.w_up, up.get<float>(), FF, nullptr}};
      linear_multi(gu, 2, norm2, &L.ffn_norm, nr, kFoldGateUp);
      mark("gate + up");
      ActPrep glu;
      glu.transform = ActTransform::SwiGLU;
      glu.x = gate.get<float>();
      glu.up = up.get<float>();
      glu.ld_x = FF;
      linear(L.w_down, glu, gate.get(), nr, Xr, E, nullptr, true);
      mark("down");
    }
    if (!logits) return;
    const int first = all_logits ? 0 : n - 1;
    ActPrep fin;
    fin.transform = ActTransform::RmsNorm;
    fin.x = X + first * E;
    fin.ld_x = E;
    fin.norm_w = reinterpret_cast<const float*>(output_norm.data);
    fin.eps = c.rms_eps;
    linear(output, fin, &output_norm, n - first, logits, c.n_vocab, nullptr, false, kFoldLmHead);
    mark("lm head");
  }

  // ---- steps ---------------------------------------------------------------------------------

  void set_pos_host(int pos) { set_device_int(d_pos, pos, stream); }

  // Host tokens -> d_tokens and the history at n_past. Caller syncs before reusing the staging.
  void stage_tokens(const int32_t* tokens, int n) {
    std::memcpy(h_pinned + 1, tokens, n * sizeof(int32_t));
    PYRESA_CUDA_CHECK(cudaMemcpyAsync(d_tokens, h_pinned + 1, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    PYRESA_CUDA_CHECK(cudaMemcpyAsync(history.get<int32_t>() + n_past, d_tokens, n * sizeof(int32_t),
                                      cudaMemcpyDeviceToDevice, stream));
  }

  bool sparse_mode() const { return att.mode != "dense"; }

  void count_step(bool sparse) {
    const int64_t n_tokens = n_past + 1;
    const int64_t nbk = cpu::resa_block_count(n_tokens, att.block_size);
    cpu::ResaSelectParams p;
    p.block_size = att.block_size;
    p.ratio = att.ratio;
    p.min_blocks = att.min_blocks;
    p.local_blocks = att.local_blocks;
    const int64_t nsel = sparse ? cpu::resa_select_count(n_tokens, p) : nbk;
    const int64_t lh = (int64_t)c.n_layer * c.n_head_kv;
    st.decode_steps++;
    st.blocks_read += nsel * lh;
    st.blocks_total += nbk * lh;
  }

  // A graph-captured single-token step: d_tokens[0] holds the token; ends with the argmax in
  // d_argmax / d_tokens[0] / history and the position advanced by one.
  void run_step(StepKind kind, bool want_argmax) {
    const int f = att.rectify_every;
    int splits, n_rows;
    if (kind == StepKind::Rectify) {
      n_rows = (f + 1) * (c.n_head / c.n_head_kv);
      splits = dense_splits(kind, f + 1, n_past + 1, true);
    } else {
      n_rows = c.n_head / c.n_head_kv;
      int n_tiles;
      if (kind == StepKind::SparseDecode) {
        cpu::ResaSelectParams p;
        p.block_size = att.block_size;
        p.ratio = att.ratio;
        p.min_blocks = att.min_blocks;
        p.local_blocks = att.local_blocks;
        n_tiles = (int)((cpu::resa_select_count(n_past + 1, p) * (att.block_size / 16) + 1) / 2);
      } else {
        n_tiles = (n_past + 1 + 31) / 32;
      }
      splits = attention_splits(n_rows, n_tiles, true);
    }
    auto body = [&]() {
      if (kind == StepKind::Rectify) gather_rectify_tokens();
      forward(kind == StepKind::Rectify ? f + 1 : 1, kind == StepKind::Rectify ? -f : 0, kind, splits,
              logits1.get<float>(), false);
      argmax(logits1.get<float>(), c.n_vocab, d_tokens, history.get<int32_t>(), d_pos, stream, &argmax_sc);
      advance_position(d_pos, 1, stream);
    };
    (void)want_argmax;
    // A rectification's graph also bakes in its last layer's one-row attention splits.
    const int tail = kind == StepKind::Rectify ? tail_attention_splits(n_past + 1) : 0;
    const auto key = std::make_pair((int)kind, splits * (kMaxDecodeSplits + 1) + tail);
    auto it = graphs.find(key);
    if (it != graphs.end()) {
      PYRESA_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
    } else if (env_int("PYRESA_CUDA_GRAPHS", 1) == 0) {
      body();
    } else {
      body();  // first time eagerly (kernel attributes are set outside capture), then capture
      cudaGraph_t g;
      PYRESA_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      // The captured copy must not run now: end the capture before launching anything else.
      try {
        capture_only(body);
      } catch (...) {
        cudaStreamEndCapture(stream, &g);
        throw;
      }
      PYRESA_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
      cudaGraphExec_t exec;
      PYRESA_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
      cudaGraphDestroy(g);
      graphs[key] = exec;
    }
    n_past++;
  }
  template <typename F>
  void capture_only(F&& body) { body(); }

  void gather_rectify_tokens() {
    // d_tokens[0 .. f] = history[pos - f .. pos] (the new token was stored at pos = *d_pos).
    gather_tokens(history.get<int32_t>(), d_pos, -att.rectify_every, att.rectify_every + 1, d_tokens, stream);
  }

  void drop_graphs() {
    for (auto& g : graphs) cudaGraphExecDestroy(g.second);
    graphs.clear();
  }

  // One single-token step from the current state (token in d_tokens[0] and history[n_past]).
  void single_step() {
    if (att.mode == "resa" && sparse_steps >= att.rectify_every && n_past >= att.rectify_every) {
      run_step(StepKind::Rectify, true);
      st.rectifications++;
      st.rectified_tokens += att.rectify_every;
      sparse_steps = 0;
    } else if (sparse_mode()) {
      count_step(true);
      run_step(StepKind::SparseDecode, true);
      sparse_steps++;
    } else {
      count_step(false);
      run_step(StepKind::Decode, true);
    }
  }

  // Whether an F16 activation overflowed since the last call (and clears the flag).
  bool take_f16_overflow() {
    int v = 0;
    PYRESA_CUDA_CHECK(cudaMemcpyAsync(&v, f16_overflow.get(), sizeof v, cudaMemcpyDeviceToHost, stream));
    PYRESA_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (v) PYRESA_CUDA_CHECK(cudaMemsetAsync(f16_overflow.get(), 0, sizeof(int), stream));
    return v != 0;
  }

  void prefill(int n, float* logits, bool all_logits, bool on_device) {
    struct Restore {  // q8_only holds for one prefill: the next one tries the F16 path again
      bool& flag;
      ~Restore() { flag = false; }
    } restore{q8_only};
    const int64_t V = c.n_vocab;
    int step = nb;
    for (int s = 0; s < n;) {
      const int m = std::min(step, n - s);
      const bool last = s + m == n;
      float* dst = nullptr;
      if (all_logits || last) {
        if (on_device) {
          dst = logits ? logits + (all_logits ? (int64_t)s * V : 0) : logits1.get<float>();
        } else if (all_logits) {
          if (logits_rows < nb) {
            logits_all = DeviceBuffer((size_t)nb * V * sizeof(float), "logits");
            logits_rows = nb;
          }
          dst = logits_all.get<float>();
        } else {
          dst = logits1.get<float>();
        }
      }
      set_pos_host(n_past);
      stage_tokens_chunk(s, m);
      const int splits = dense_splits(StepKind::Prefill, m, n_past + m, false);
      forward(m, 0, StepKind::Prefill, splits, dst, all_logits);
      if (!on_device && logits && all_logits) {
        PYRESA_CUDA_CHECK(cudaMemcpyAsync(logits + (int64_t)s * V, dst, (size_t)m * V * sizeof(float),
                                          cudaMemcpyDeviceToHost, stream));
      }
      if (last && !all_logits && dst != logits1.get<float>())
        PYRESA_CUDA_CHECK(cudaMemcpyAsync(logits1.get<float>(), dst, V * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      PYRESA_CUDA_CHECK(cudaStreamSynchronize(stream));  // staging buffer reused by the next chunk
      if (take_f16_overflow()) {
        // Its K/V rows and logits are rewritten by the redo (n_past has not moved). Chunks of 64
        // tokens or fewer already took the int8 path where the weight type has one.
        if (q8_only || m <= 64)
          throw UnsupportedError("CUDA engine: activations past F16's range (65504) in a batched product whose "
                                 "weight type has no int8 path; the CPU backend computes this model exactly");
        q8_only = true;
        step = 64;
        continue;
      }
      n_past += m;
      s += m;
    }
    if (logits && !all_logits && !on_device) {
      PYRESA_CUDA_CHECK(cudaMemcpyAsync(logits, logits1.get(), V * sizeof(float), cudaMemcpyDeviceToHost, stream));
      PYRESA_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    set_pos_host(n_past);
    sparse_steps = 0;
  }

  const int32_t* chunk_src = nullptr;
  void stage_tokens_chunk(int s, int m) { stage_tokens(chunk_src + s, m); }
};

// ---- public interface ------------------------------------------------------------------------

CudaEngine::CudaEngine(ModelConfig config, const ModelWeights& weights, CudaEngineOptions options)
    : impl_(new Impl) {
  Impl& m = *impl_;
  m.c = std::move(config);
  m.opt = options;
  if (options.n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
  const int n_dev = cuda_device_count();
  if (n_dev == 0) throw UnsupportedError("no CUDA device is available");
  if (options.device < 0 || options.device >= n_dev)
    throw std::invalid_argument("CUDA device " + std::to_string(options.device) + " does not exist (" +
                                std::to_string(n_dev) + " present)");
  m.device = options.device;
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  cudaDeviceProp prop{};
  PYRESA_CUDA_CHECK(cudaGetDeviceProperties(&prop, m.device));
  if (prop.major < 8)
    throw UnsupportedError(std::string("pyresa's CUDA kernels need compute capability 8.0+, ") + prop.name + " has " +
                           std::to_string(prop.major) + "." + std::to_string(prop.minor));
  m.n_sm = prop.multiProcessorCount;
  pdl_enabled() = prop.major >= 9 && env_int("PYRESA_CUDA_PDL", 1) != 0;
  if (m.c.head_dim != 64 && m.c.head_dim != 128)
    throw UnsupportedError("CUDA backend: head_dim must be 64 or 128, got " + std::to_string(m.c.head_dim));
  if (m.c.n_head / m.c.n_head_kv > 16) throw UnsupportedError("CUDA backend: at most 16 query heads per KV head");
  PYRESA_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  m.theta_scale = std::pow(m.c.rope_freq_base, -2.0f / m.c.head_dim);
  m.gemm_min_tokens = env_int("PYRESA_CUDA_GEMM_MIN_TOKENS", 65);
  m.matvec_max_tokens = env_int("PYRESA_CUDA_MATVEC_MAX_TOKENS", 8);
  matvec_rows_per_warp() = env_int("PYRESA_CUDA_MATVEC_ROWS", 2);
  matvec_steps() = env_int("PYRESA_CUDA_MATVEC_STEPS", 2);
  matvec_grid_cap() = m.n_sm * std::max(0, env_int("PYRESA_CUDA_MATVEC_CTAS_PER_SM", 0));
  matvec_wide() = env_int("PYRESA_CUDA_MATVEC_WIDE", 0);
  matvec_ksplit() = env_int("PYRESA_CUDA_MATVEC_KSPLIT", 0);
  matvec_prefetch() = env_int("PYRESA_CUDA_MATVEC_PREFETCH", 2);
  // One-token Q4_K/Q6_K on the int8 tensor cores: measured slower than dp4a (runs 11-mmv, 12-mmv), off.
  matvec_mma_mode() = env_int("PYRESA_CUDA_MATVEC_MMA", 0);
  matvec_mma_split() = env_int("PYRESA_CUDA_MATVEC_MMA_SPLIT", 0);  // K parts per tile (0: by cost)
  // One-token Q4_K/Q6_K fed by bulk copies into a shared-memory ring (run 13-mmvbulk), for the
  // products with at least 8 row groups of 16 per CTA (gate+up, the lm head): the CTAs' streams
  // are long there; down, q/k/v and o keep the dp4a kernel. Run 13, H100, same build: dense@0
  // 353.5 -> 374.6 tok/s, ReSA@256K 220.1 -> 227.9. PYRESA_CUDA_MATVEC_BULK=0 turns it off.
  matvec_bulk_mode() = env_int("PYRESA_CUDA_MATVEC_BULK", 1);
  matvec_bulk_min_groups() = env_int("PYRESA_CUDA_MATVEC_BULK_MIN_GROUPS", 8);
  // Run 10-fixed-fuse (H100): folding the input's preparation into the products and the SwiGLU
  // quantize into gate+up's epilogue both lost (off); q/k/v in one launch, v first, won.
  m.fold_prep = env_int("PYRESA_CUDA_FUSE_NORM", 0);
  {
    const int qkv = env_int("PYRESA_CUDA_QKV_ONE", 3);
    m.qkv_one = qkv != 0;
    m.qkv_v_first = qkv == 3;
  }
  m.glu_epilogue = env_int("PYRESA_CUDA_GLU_EPILOGUE", 0) != 0;
  matvec_prep_grid_cap() = m.n_sm * std::max(0, env_int("PYRESA_CUDA_FUSE_CTAS_PER_SM", 0));
  {
    const char* v = std::getenv("PYRESA_CUDA_DQMM");  // "old": dqmm_kernel for every format
    dqmm_variant() = !v || !*v ? kDqmmDefaultVariant : std::string(v) == "old" ? 0 : std::atoi(v);
  }
  dqmm_stages() = env_int("PYRESA_CUDA_DQMM_STAGES", 0);
  // Run 12-rectmmq: the 2..64-token products of Q4_K / Q6_K weights on the int8 tensor cores
  // (matmul_mma.cu, Q8_K activations: the CPU's integers) instead of dqmm-pipe (F16): on by
  // default (H100: -9 % kernel alone at 33 tokens, -0.46 ms per rectification; 0 = dqmm-pipe).
  small_mmq_mode() = env_int("PYRESA_CUDA_SMALL_MMQ", 1);
  small_mmq_stages() = env_int("PYRESA_CUDA_SMALL_MMQ_STAGES", 0);
  dqmm_prefetch() = env_int("PYRESA_CUDA_DQMM_PREFETCH", 0);
  {
    const bool early = env_int("PYRESA_CUDA_PDL_EARLY", 1) != 0;
    set_pdl_early_quant(early);
    set_pdl_early_ops(early);
  }
  m.precise_dense = env_int("PYRESA_CUDA_PRECISE_DENSE", 1) != 0;
  // The rectification's attention with its query and probabilities kept at ~F32 by two F16 terms
  // (1, the default), or plain F16 (0), as llama.cpp's flash attention computes every attention.
  // Run 11-rect-wgmma measured what the two terms buy at the engine level: the logits move by
  // 1.45e-3 (relative) between the two modes, no more than reordering the same precise arithmetic
  // moves them (1.53e-3) and under what the CPU's own two kernel sets differ by (4.0e-3). Plain F16
  // halves the tensor work: ReSA@256K 210.1 -> 216.2 tok/s on the wgmma kernel (run 12, same build).
  // It stays off until the engine tests have run with it (the device time ran out first).
  m.rect_precise = env_int("PYRESA_CUDA_RECT_PRECISE", 0) != 0;
  // The wgmma kernel by default (run 12-attn12, H100 same-build A/B: ReSA@256K 205.0 -> 210.6 tok/s,
  // pp8192 12,513 -> 12,851); variant 3 where it is unavailable (below).
  m.rect_kernel = kernel_switch("PYRESA_CUDA_RECT_KERNEL", 4);
  m.prefill_kernel = kernel_switch("PYRESA_CUDA_PREFILL_KERNEL", 4);
  cuda::attention_wgmma_waves() = std::max(1, env_int("PYRESA_CUDA_RECT_WAVES", 2));
  for (int* k : {&m.rect_kernel, &m.prefill_kernel}) {
    if (*k == 4 && !cuda::attention_wgmma_available()) *k = 3;  // no sm_90a code or not Hopper
    // too little shared memory: the general kernel
    if (*k && cuda::attention_batched_smem_bytes(*k, m.c.head_dim) > prop.sharedMemPerBlockOptin) *k = 0;
  }
  // Decode steps' attention (dense and sparse): 1 = the decode kernel (attention_decode.cu: two
  // warps per CTA; the one-warp kernel and its PYRESA_CUDA_DECODE_WARPS / _DECODE_STAGES switches
  // were removed in run 12-attn12, slower at every depth) and the parallel combine, 0 = the
  // general kernel and the serial combine (A/B runs).
  cuda::decode_attention_enabled() = env_int("PYRESA_CUDA_SPARSE_STEP", 1) != 0;
  // Block selection (run 11): the cluster top-n or "old" (one CTA per KV head); the cluster size
  // (0: from the cache size); the scoring triggering the top-n's launch early (off: slower); the
  // scoring reading the query before the position (on: ~0.15 us per layer).
  {
    const char* v = std::getenv("PYRESA_CUDA_TOPN");
    cuda::select_config().topn = v && std::string(v) == "old" ? 0 : 1;
    cuda::select_config().topn_ctas = env_int("PYRESA_CUDA_TOPN_CTAS", 0);
    cuda::select_config().score_trigger = env_int("PYRESA_CUDA_SCORE_TRIGGER", 0) != 0;
    cuda::select_config().score_early_q = env_int("PYRESA_CUDA_SCORE_EARLY_Q", 1) != 0;
    cuda::select_config().topn_stop = 0;
  }
  // The decode kernel's splits merged by a separate kernel (0) or inside it (1, runs 11 and 12:
  // slower).
  cuda::decode_combine_mode() = env_int("PYRESA_CUDA_DECODE_COMBINE", 0);
  // The decode kernel's shape (see attention_decode.cuh): four warps per CTA, three stages, two
  // mma chains per warp by default (run 13, H100: 256K sparse attention 31.3 -> 28.8 us per layer,
  // dense 208.8 -> 198.2; the 7B engine ReSA@256K 216.1 -> 219.7 tok/s, dense 116.0 -> 121.2).
  cuda::decode_attention_shape() = env_int("PYRESA_CUDA_DECODE_SHAPE", 431);
  m.upload(weights);
  m.check_types();
  m.opt.n_batch = std::max(options.n_batch, m.att.rectify_every + 1);
  m.allocate(options.n_ctx);
  PYRESA_CUDA_CHECK(cudaDeviceSynchronize());
}

CudaEngine::~CudaEngine() {
  if (impl_) cudaSetDevice(impl_->device);
}

const ModelConfig& CudaEngine::config() const { return impl_->c; }
int CudaEngine::n_ctx() const { return impl_->opt.n_ctx; }
int CudaEngine::n_past() const { return impl_->n_past; }
int CudaEngine::device() const { return impl_->device; }
size_t CudaEngine::kv_bytes() const { return impl_->k_cache.bytes() + impl_->v_cache.bytes(); }
size_t CudaEngine::device_bytes() const {
  const Impl& m = *impl_;
  size_t s = 0;
  for (const DeviceBuffer* b : {&m.weights_buf, &m.k_cache, &m.v_cache, &m.desc, &m.x, &m.q, &m.k, &m.v, &m.attn,
                                &m.gate, &m.up, &m.act, &m.wdeq, &m.logits_all, &m.logits1, &m.attn_work, &m.small_ws, &m.keys,
                                &m.blocks, &m.ints, &m.argmax_mem, &m.history})
    s += b->bytes();
  return s;
}

void CudaEngine::truncate(int n) {
  Impl& m = *impl_;
  if (n < 0 || n > m.n_past)
    throw std::invalid_argument("truncate(" + std::to_string(n) + ") outside [0, " + std::to_string(m.n_past) + "]");
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  const int removed = m.n_past - n;
  m.sparse_steps = std::min(m.sparse_steps, n);  // as the CPU engine
  m.n_past = n;
  if (removed > 0 && n % m.att.block_size != 0) {
    // The block now ending the context lost tokens: rebuild its min/max from what remains.
    const int first = n / m.att.block_size * m.att.block_size;
    m.set_pos_host(first);
    for (int l = 0; l < m.c.n_layer; ++l)
      refresh_descriptors(m.desc.get<__half>(), m.desc_layout, l, m.k_cache.get<__half>() + l * m.layer_stride,
                          m.head_stride, m.d_pos, 0, n - first, m.stream);
  }
  m.set_pos_host(n);
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void CudaEngine::eval(const int32_t* tokens, int n, bool all_logits, float* logits, bool on_device) {
  Impl& m = *impl_;
  if (n <= 0) throw std::invalid_argument("eval needs at least one token");
  if (m.n_past + n > m.opt.n_ctx)
    throw ContextFullError("context full: " + std::to_string(m.n_past) + " tokens in the cache + " + std::to_string(n) +
                           " new > n_ctx " + std::to_string(m.opt.n_ctx));
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= m.c.n_vocab)
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " outside the vocabulary [0, " +
                                  std::to_string(m.c.n_vocab) + ")");
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  if (n == 1 && !all_logits) {
    m.set_pos_host(m.n_past);
    m.stage_tokens(tokens, 1);
    m.single_step();
    if (logits) {
      PYRESA_CUDA_CHECK(cudaMemcpyAsync(logits, m.logits1.get(), (size_t)m.c.n_vocab * sizeof(float),
                                        on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost, m.stream));
    }
    PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    return;
  }
  if (m.att.mode == "resa" && m.sparse_steps > 0) {
    // Tokens decoded sparsely since the last rectification run again, densely, with the new ones
    // (as the CPU engine): their K/V are rewritten and the new tokens' logits come from this pass.
    if (all_logits && on_device)
      throw UnsupportedError("CUDA engine: all-token logits on the device right after sparse decoding");
    const int k = m.sparse_steps;
    std::vector<int32_t> rerun(k + n);
    PYRESA_CUDA_CHECK(cudaMemcpyAsync(rerun.data(), m.history.get<int32_t>() + (m.n_past - k), k * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, m.stream));
    PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    std::copy(tokens, tokens + n, rerun.begin() + k);
    m.n_past -= k;
    m.sparse_steps = 0;
    m.st.rectifications++;
    m.st.rectified_tokens += k;
    m.chunk_src = rerun.data();
    if (all_logits && logits) {  // only the new tokens' rows go out
      const size_t V = m.c.n_vocab;
      std::vector<float> all((size_t)(k + n) * V);
      m.prefill(k + n, all.data(), true, false);
      std::copy(all.begin() + (size_t)k * V, all.end(), logits);
    } else {
      m.prefill(k + n, logits, false, on_device);
    }
    return;
  }
  m.chunk_src = tokens;
  m.prefill(n, logits, all_logits, on_device);
}

int32_t CudaEngine::eval_greedy(const int32_t* tokens, int n) {
  Impl& m = *impl_;
  eval(tokens, n, false, nullptr);
  if (n > 1) {  // prefill left the last logits in logits1; the step path already took the argmax
    m.set_pos_host(m.n_past - 1);
    argmax(m.logits1.get<float>(), m.c.n_vocab, m.d_tokens, m.history.get<int32_t>(), m.d_pos, m.stream, &m.argmax_sc);
    m.set_pos_host(m.n_past);
  }
  int32_t out = 0;
  PYRESA_CUDA_CHECK(cudaMemcpyAsync(&m.h_pinned[0], m.d_tokens, sizeof(int32_t), cudaMemcpyDeviceToHost, m.stream));
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  out = m.h_pinned[0];
  return out;
}

TopCandidates CudaEngine::eval_top(const int32_t* tokens, int n, int k, const std::vector<int32_t>& penalized,
                                   float penalty, bool want_sum) {
  Impl& m = *impl_;
  if (k < 1 || k > cuda::kMaxCandidates)
    throw std::invalid_argument("eval_top: k must be in [1, " + std::to_string(cuda::kMaxCandidates) + "], got " +
                                std::to_string(k));
  if (!(penalty > 0.0f)) throw std::invalid_argument("eval_top: the repetition penalty must be > 0");
  eval(tokens, n, false, nullptr);
  const int V = m.c.n_vocab;
  const int kk = std::min(k, V);
  if (m.samp_out.bytes() == 0)
    m.samp_out = DeviceBuffer(2 * sizeof(double) + (size_t)cuda::kMaxCandidates * 8, "sampling candidates");
  cuda::TopCandidatesArgs a;
  a.logits = m.logits1.get<float>();
  a.n = V;
  a.k = kk;
  a.want_sum = want_sum;
  a.stats = m.samp_out.get<double>();
  a.out_ids = reinterpret_cast<int32_t*>(a.stats + 2);
  a.out_logits = reinterpret_cast<float*>(a.out_ids + cuda::kMaxCandidates);
  if (!penalized.empty() && penalty != 1.0f) {
    if (m.samp_work.bytes() == 0) m.samp_work = DeviceBuffer((size_t)V * sizeof(float), "sampling logits copy");
    if (m.samp_penalized.bytes() < penalized.size() * sizeof(int32_t))
      m.samp_penalized = DeviceBuffer(penalized.size() * sizeof(int32_t), "penalized token ids");
    PYRESA_CUDA_CHECK(cudaMemcpyAsync(m.samp_penalized.get(), penalized.data(), penalized.size() * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, m.stream));
    a.penalized = m.samp_penalized.get<int32_t>();
    a.n_penalized = (int)penalized.size();
    a.penalty = penalty;
    a.work = m.samp_work.get<float>();
  }
  cuda::top_candidates(a, m.stream);
  std::vector<uint8_t> host(m.samp_out.bytes());
  PYRESA_CUDA_CHECK(cudaMemcpyAsync(host.data(), m.samp_out.get(), host.size(), cudaMemcpyDeviceToHost, m.stream));
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));  // also keeps `penalized` alive until the copy ran
  TopCandidates out;
  const double* stats = reinterpret_cast<const double*>(host.data());
  const int32_t* ids = reinterpret_cast<const int32_t*>(stats + 2);
  const float* vals = reinterpret_cast<const float*>(ids + cuda::kMaxCandidates);
  out.ids.assign(ids, ids + kk);
  out.logits.assign(vals, vals + kk);
  out.max_logit = stats[0];
  out.sum_exp = stats[1];
  return out;
}

void CudaEngine::last_logits(float* out) {
  Impl& m = *impl_;
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  PYRESA_CUDA_CHECK(cudaMemcpyAsync(out, m.logits1.get(), (size_t)m.c.n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                    m.stream));
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

std::vector<int32_t> CudaEngine::decode_greedy(int32_t token, int n_new) {
  Impl& m = *impl_;
  if (n_new <= 0) return {};
  if (m.n_past + n_new > m.opt.n_ctx)
    throw ContextFullError("context full: " + std::to_string(m.n_past) + " + " + std::to_string(n_new) + " > n_ctx " +
                           std::to_string(m.opt.n_ctx));
  if (token < 0 || token >= m.c.n_vocab) throw std::invalid_argument("token id outside the vocabulary");
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  const int start = m.n_past;
  m.set_pos_host(m.n_past);
  m.stage_tokens(&token, 1);
  for (int i = 0; i < n_new; ++i) m.single_step();  // each step's argmax feeds the next
  std::vector<int32_t> out(n_new);
  PYRESA_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.history.get<int32_t>() + start + 1, n_new * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, m.stream));
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return out;
}

void CudaEngine::set_attention(const AttentionSettings& s) {
  Impl& m = *impl_;
  if (s.mode != "dense" && s.mode != "sparse" && s.mode != "resa")
    throw std::invalid_argument("attention mode must be 'dense', 'sparse' or 'resa', got '" + s.mode + "'");
  if (s.block_size <= 0 || s.block_size % 16)
    throw UnsupportedError("CUDA backend: block_size must be a positive multiple of 16");
  if (!(s.ratio >= 0.0) || s.min_blocks < 0 || s.local_blocks < 0)
    throw std::invalid_argument("ratio, min_blocks and local_blocks must be >= 0");
  if (s.rectify_every < 1) throw std::invalid_argument("rectify_every must be >= 1");
  if (s.rectify_every + 1 > m.nb)
    throw std::invalid_argument("rectify_every + 1 must fit in n_batch (" + std::to_string(m.nb) + ")");
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  const bool rebuild = s.block_size != m.att.block_size;
  if (s.mode != "resa") m.sparse_steps = 0;  // nothing will rectify them: they stay as decoded
  m.att = s;
  m.drop_graphs();
  if (rebuild) {
    m.allocate_desc();
    m.set_pos_host(0);
    for (int l = 0; l < m.c.n_layer && m.n_past > 0; ++l)
      refresh_descriptors(m.desc.get<__half>(), m.desc_layout, l, m.k_cache.get<__half>() + l * m.layer_stride,
                          m.head_stride, m.d_pos, 0, m.n_past, m.stream);
    m.set_pos_host(m.n_past);
    PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  }
}

const AttentionSettings& CudaEngine::attention() const { return impl_->att; }
AttentionStats CudaEngine::stats() const { return impl_->st; }
void CudaEngine::reset_stats() { impl_->st = AttentionStats{}; }

void CudaEngine::fill_synthetic(int n_tokens, uint64_t seed) {
  Impl& m = *impl_;
  if (n_tokens < 0 || n_tokens > m.opt.n_ctx) throw std::invalid_argument("fill_synthetic: n_tokens outside [0, n_ctx]");
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  fill_kv_random(m.k_cache.get<__half>(), m.v_cache.get<__half>(), m.c.n_layer, m.c.n_head_kv, m.head_stride,
                 m.c.head_dim, n_tokens, seed, m.stream);
  // (layers are contiguous: layer l, head h is head index l * n_kv_head + h at head_stride)
  m.set_pos_host(0);
  for (int l = 0; l < m.c.n_layer && n_tokens > 0; ++l)
    refresh_descriptors(m.desc.get<__half>(), m.desc_layout, l, m.k_cache.get<__half>() + l * m.layer_stride,
                        m.head_stride, m.d_pos, 0, n_tokens, m.stream);
  std::vector<int32_t> hist(n_tokens);
  uint64_t s = seed | 1;
  for (auto& t : hist) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    t = (int32_t)(s % (uint64_t)m.c.n_vocab);
  }
  if (n_tokens)
    PYRESA_CUDA_CHECK(cudaMemcpy(m.history.get(), hist.data(), n_tokens * sizeof(int32_t), cudaMemcpyHostToDevice));
  m.n_past = n_tokens;
  m.sparse_steps = 0;
  m.set_pos_host(n_tokens);
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

std::vector<std::pair<std::string, double>> CudaEngine::profile_step(int32_t token, bool rectify) {
  Impl& m = *impl_;
  PYRESA_CUDA_CHECK(cudaSetDevice(m.device));
  if (m.n_past + 1 > m.opt.n_ctx) throw ContextFullError("profile_step: context full");
  m.set_pos_host(m.n_past);
  m.stage_tokens(&token, 1);
  const int f = m.att.rectify_every;
  const bool rect = rectify && m.n_past >= f;
  const StepKind kind = rect ? StepKind::Rectify : m.sparse_mode() ? StepKind::SparseDecode : StepKind::Decode;
  int splits;
  if (rect) {
    splits = m.dense_splits(StepKind::Rectify, f + 1, m.n_past + 1, false);
    m.gather_rectify_tokens();
  } else {
    cpu::ResaSelectParams p;
    p.block_size = m.att.block_size;
    p.ratio = m.att.ratio;
    p.min_blocks = m.att.min_blocks;
    p.local_blocks = m.att.local_blocks;
    const int n_tiles = kind == StepKind::SparseDecode
                            ? (int)((cpu::resa_select_count(m.n_past + 1, p) * (m.att.block_size / 16) + 1) / 2)
                            : (m.n_past + 1 + 31) / 32;
    splits = m.attention_splits(m.c.n_head / m.c.n_head_kv, n_tiles, false);
  }
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  m.prof_on = true;
  m.prof_marks.clear();
  try {
    m.forward(rect ? f + 1 : 1, rect ? -f : 0, kind, splits, m.logits1.get<float>(), false);
  } catch (...) {
    m.prof_on = false;
    throw;
  }
  m.prof_on = false;
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  std::vector<std::pair<std::string, double>> out;
  std::map<std::string, double> acc;
  for (size_t i = 1; i < m.prof_marks.size(); ++i) {
    float ms = 0.0f;
    PYRESA_CUDA_CHECK(cudaEventElapsedTime(&ms, m.prof_marks[i - 1].second, m.prof_marks[i].second));
    if (!acc.count(m.prof_marks[i].first)) out.emplace_back(m.prof_marks[i].first, 0.0);
    acc[m.prof_marks[i].first] += ms;
  }
  for (auto& e : m.prof_marks) cudaEventDestroy(e.second);
  m.prof_marks.clear();
  for (auto& o : out) o.second = acc[o.first];
  // The step is not kept: the position does not advance (the cache slot is overwritten next).
  m.set_pos_host(m.n_past);
  PYRESA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return out;
}

std::pair<int, int> CudaEngine::dense_attention_kernels() const { return {impl_->rect_kernel, impl_->prefill_kernel}; }

void CudaEngine::synchronize() { PYRESA_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

}  // namespace pyresa
