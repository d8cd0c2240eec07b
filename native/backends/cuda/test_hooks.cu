#include "backends/cuda/test_hooks.h"

#include <algorithm>
#include <cmath>
#include "formats/fp16.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <utility>
#include <vector>

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

namespace pyresa::cuda_test {

using namespace pyresa::cuda;

namespace {

// The dequantize-and-multiply kernel a test path code selects (3: dqmm_kernel; >= 10: the
// pipelined kernel, 100 * variant + 10 * (prefetch + 1) + stages, + 1000: early trigger), for
// the object's lifetime; the engine's settings come back after.
struct DqmmPathScope {
  int v = dqmm_variant(), st = dqmm_stages(), pf = dqmm_prefetch();
  explicit DqmmPathScope(int path) {
    if (path == 3) dqmm_variant() = 0;
    if (path >= 10) {
      dqmm_variant() = std::max(1, path / 100 % 10);
      dqmm_stages() = path % 10;
      dqmm_prefetch() = (path / 10) % 10 - 1 + (path >= 1000 ? 100 : 0);
    }
  }
  ~DqmmPathScope() {
    dqmm_variant() = v;
    dqmm_stages() = st;
    dqmm_prefetch() = pf;
  }
};

DeviceBuffer to_device(const void* src, size_t bytes, const char* what = "test input") {
  DeviceBuffer b(bytes ? bytes : 16, what);
  if (bytes) PYRESA_CUDA_CHECK(cudaMemcpy(b.get(), src, bytes, cudaMemcpyHostToDevice));
  return b;
}
DeviceBuffer poisoned(size_t bytes) {  // 0xFF bytes: NaN floats, so unwritten outputs show
  DeviceBuffer b(bytes ? bytes : 16, "test output");
  PYRESA_CUDA_CHECK(cudaMemset(b.get(), 0xFF, b.bytes()));
  return b;
}
template <typename T>
std::vector<T> to_host(const DeviceBuffer& b, size_t n) {
  std::vector<T> out(n);
  PYRESA_CUDA_CHECK(cudaDeviceSynchronize());
  PYRESA_CUDA_CHECK(cudaMemcpy(out.data(), b.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return out;
}
DeviceWeight upload(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, DeviceBuffer& store) {
  const GgmlType t = static_cast<GgmlType>(type);
  const size_t need = device_weight_bytes(t, rows, cols);
  if (w_bytes < need) throw std::invalid_argument("too few weight bytes");
  store = DeviceBuffer(need, "test weights");
  return upload_weight(t, rows, cols, w, store.get<uint8_t>());
}
DeviceBuffer pos_buffer(int pos) { return to_device(&pos, sizeof(int)); }

// Engine switches (the int& getters of the kernels' files) set for the object's lifetime and
// restored after, last set first restored.
class SwitchScope {
 public:
  SwitchScope(std::initializer_list<std::pair<int*, int>> values) {
    for (const auto& [sw, v] : values) {
      saved_.emplace_back(sw, *sw);
      *sw = v;
    }
  }
  SwitchScope(const SwitchScope&) = delete;
  SwitchScope& operator=(const SwitchScope&) = delete;
  ~SwitchScope() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) *it->first = it->second;
  }

 private:
  std::vector<std::pair<int*, int>> saved_;
};

// The one-token tensor-core products (matvec_mma.cu) on (1-3) or off (0), and the bulk-copy ones
// (matvec_bulk.cu) off: the hooks that test the dp4a kernels switch both off, so they keep testing
// those kernels (an engine made with PYRESA_CUDA_MATVEC_BULK=1 in the same process sets it).
SwitchScope matvec_mma_scope(int mode, int forced_split = 0, int grid_cap = 0) {
  return SwitchScope({{&matvec_mma_mode(), mode}, {&matvec_mma_split(), forced_split}, {&matvec_mma_grid_cap(), grid_cap},
                      {&matvec_bulk_mode(), 0}});
}

}  // namespace

namespace {
// 1-3 weights of one row length, uploaded back to back from `w` (ggml bytes), with their outputs
// as consecutive slices of one y (accumulate: y starts at 0.25 * (i % 7) - 0.5; else poisoned)
// and a bias over all rows (or none): the one-token product hooks' common setup.
struct WeightBatch {
  int n_w = 0;
  int64_t total_rows = 0;
  DeviceBuffer wb[3], bb, y;
  DeviceWeight dw[3];
  MatvecOut os[3];
  WeightBatch(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols, const uint8_t* w,
              size_t w_bytes, const float* bias, bool accumulate) {
    n_w = (int)types.size();
    if (n_w < 1 || n_w > 3 || rows.size() != types.size()) throw std::invalid_argument("1-3 weights, a row count each");
    size_t off = 0;
    for (int i = 0; i < n_w; ++i) {
      const size_t bytes = device_weight_bytes(static_cast<GgmlType>(types[i]), rows[i], cols);
      if (off + bytes > w_bytes) throw std::invalid_argument("too few weight bytes");
      dw[i] = upload(types[i], rows[i], cols, w + off, bytes, wb[i]);
      off += bytes;
      total_rows += rows[i];
    }
    bb = bias ? to_device(bias, sizeof(float) * total_rows) : DeviceBuffer();
    std::vector<float> y0(total_rows);
    for (int64_t i = 0; i < total_rows; ++i) y0[i] = 0.25f * (float)(i % 7) - 0.5f;
    y = accumulate ? to_device(y0.data(), sizeof(float) * total_rows) : poisoned(sizeof(float) * total_rows);
    int64_t r0 = 0;
    for (int i = 0; i < n_w; ++i) {
      os[i].y = y.get<float>() + r0;
      os[i].ldy = rows[i];
      os[i].bias = bias ? bb.get<float>() + r0 : nullptr;
      os[i].accumulate = accumulate;
      r0 += rows[i];
    }
  }
  std::vector<float> result() { return to_host<float>(y, (size_t)total_rows); }
};
}  // namespace

std::vector<float> matvec(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, const float* x, int n,
                          const float* bias, int path) {
  // path -(1000 * cap + 100 * wide + 10 * steps + rows): the one-token K-quant kernel with that
  // many rows per warp, load steps, at most `cap` CTAs (0: no cap; else a persistent grid), and
  // mode bits: 1 = the 4-lanes-per-superblock Q4_K kernel, 2 = K split over a CTA's warps.
  const int rows_per_warp = path < 0 ? -path % 10 : matvec_rows_per_warp();
  const int steps = path < 0 ? std::max(1, (-path / 10) % 10) : matvec_steps();
  const int mode = path < 0 ? (-path / 100) % 10 : -1;  // bit 0: wide Q4_K, bit 1: K split
  const int wide = mode >= 0 ? (mode & 1) : matvec_wide();
  const int ksplit = mode >= 0 ? (mode & 2 ? 1 : 0) : matvec_ksplit();
  const int cap = path < 0 ? -path / 1000 : matvec_grid_cap();
  const SwitchScope mma = matvec_mma_scope(path < 0 ? 0 : matvec_mma_mode());  // a dp4a kernel asked for by its path
  if (path < 0) path = 0;
  const bool gemm = path != 0;
  DeviceBuffer wb;
  const DeviceWeight dw = upload(type, rows, cols, w, w_bytes, wb);
  DeviceBuffer xb = to_device(x, sizeof(float) * n * cols);
  DeviceBuffer bb = bias ? to_device(bias, sizeof(float) * rows) : DeviceBuffer();
  const GgmlType fmt = gemm ? GgmlType::F16 : act_type_for(dw.type);
  const size_t rb = act_row_bytes(fmt, cols);
  DeviceBuffer act(rb * n, "test activations");
  ActPrep p;
  p.x = xb.get<float>();
  p.ld_x = cols;
  prepare_activations(p, fmt, n, cols, act.get(), rb, nullptr);
  DeviceBuffer y = poisoned(sizeof(float) * n * rows);
  if (!gemm) {
    MatvecOut o;
    o.y = y.get<float>();
    o.ldy = rows;
    o.bias = bias ? bb.get<float>() : nullptr;
    const int saved = matvec_rows_per_warp(), saved_steps = matvec_steps(), saved_cap = matvec_grid_cap();
    const int saved_wide = matvec_wide(), saved_ksplit = matvec_ksplit();
    matvec_ksplit() = ksplit;
    matvec_rows_per_warp() = rows_per_warp;
    matvec_steps() = steps;
    matvec_grid_cap() = cap;
    matvec_wide() = wide;
    matvec(dw, act.get(), rb, n, o, nullptr);
    matvec_rows_per_warp() = saved;
    matvec_steps() = saved_steps;
    matvec_grid_cap() = saved_cap;
    matvec_wide() = saved_wide;
    matvec_ksplit() = saved_ksplit;
  } else if (path == 2 || path == 3 || path >= 10) {
    DeviceBuffer ws(size_t(32) << 20, "test workspace");
    const DqmmPathScope kernel(path);
    dequant_matmul_small(dw, act.get<__half>(), rb / 2, n, y.get<float>(), rows, bias ? bb.get<float>() : nullptr,
                         false, 132, ws.get<float>(), ws.bytes() / 4, nullptr);
  } else {
    DeviceBuffer wd(sizeof(__half) * rows * cols, "test dequantized weights");
    dequantize_rows_f16(dw, 0, rows, wd.get<__half>(), nullptr);
    cuda::gemm_f16(act.get<__half>(), rb / 2, wd.get<__half>(), cols, y.get<float>(), rows, n, (int)rows, (int)cols,
             bias ? bb.get<float>() : nullptr, false, nullptr);
  }
  return to_host<float>(y, (size_t)n * rows);
}

namespace {
// matmul_mma on (mode 1 or 2), with a ring depth and grid cap.
SwitchScope small_mmq_scope(int stages, int grid_cap, int mode = 1) {
  return SwitchScope({{&small_mmq_mode(), mode}, {&small_mmq_stages(), stages}, {&small_mmq_grid_cap(), grid_cap}});
}
}  // namespace

std::vector<float> small_mmq(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, const float* x,
                             int n, const float* bias, bool accumulate, int stages, int cap, int mode) {
  DeviceBuffer wb;
  const DeviceWeight dw = upload(type, rows, cols, w, w_bytes, wb);
  DeviceBuffer xb = to_device(x, sizeof(float) * n * cols);
  DeviceBuffer bb = bias ? to_device(bias, sizeof(float) * rows) : DeviceBuffer();
  const size_t rb = act_row_bytes(GgmlType::Q8_K, cols);
  DeviceBuffer act(rb * n, "test activations");
  ActPrep p;
  p.x = xb.get<float>();
  p.ld_x = cols;
  prepare_activations(p, GgmlType::Q8_K, n, cols, act.get(), rb, nullptr);
  std::vector<float> y0((size_t)n * rows);
  for (size_t i = 0; i < y0.size(); ++i) y0[i] = 0.25f * (float)(i % 7) - 0.5f;
  DeviceBuffer y = accumulate ? to_device(y0.data(), sizeof(float) * y0.size()) : poisoned(sizeof(float) * y0.size());
  DeviceBuffer ws(size_t(32) << 20, "test workspace");
  PYRESA_CUDA_CHECK(cudaMemset(ws.get(), 0xFF, ws.bytes()));  // stale partial sums show as NaN
  int dev = 0, sms = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const SwitchScope scope = small_mmq_scope(stages, cap, mode);
  if (!matmul_mma(dw, act.get(), rb, n, y.get<float>(), rows, bias ? bb.get<float>() : nullptr, accumulate, sms,
                  ws.get<float>(), ws.bytes() / sizeof(float), nullptr))
    throw std::invalid_argument("matmul_mma does not take these weights");
  return to_host<float>(y, y0.size());
}

std::vector<float> matvec_prep(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols,
                               const uint8_t* w, size_t w_bytes, const float* x, const float* norm_w, float eps,
                               int transform, const float* bias, bool accumulate, int mode, int cap,
                               std::vector<uint8_t>& act_out) {
  WeightBatch wbt(types, rows, cols, w, w_bytes, bias, accumulate);
  const int n_w = wbt.n_w;
  DeviceWeight* dw = wbt.dw;
  MatvecOut* os = wbt.os;
  DeviceBuffer xb = to_device(x, sizeof(float) * cols);
  DeviceBuffer nw = norm_w ? to_device(norm_w, sizeof(float) * cols) : DeviceBuffer();
  ActPrep p;
  p.transform = static_cast<ActTransform>(transform);
  p.x = xb.get<float>();
  p.ld_x = cols;
  p.norm_w = norm_w ? nw.get<float>() : nullptr;
  p.eps = eps;
  const size_t rb = act_row_bytes(GgmlType::Q8_K, cols);
  DeviceBuffer act = poisoned(rb);
  const SwitchScope mma = matvec_mma_scope(0);  // the dp4a kernels, whose arithmetic matvec_rows_prep shares
  const int saved[6] = {matvec_rows_per_warp(), matvec_steps(), matvec_grid_cap(), matvec_wide(), matvec_ksplit(),
                        matvec_prep_grid_cap()};
  matvec_rows_per_warp() = 2;  // the default kernel, whose arithmetic matvec_rows_prep shares
  matvec_steps() = 2;
  matvec_grid_cap() = 0;
  matvec_wide() = 0;
  matvec_ksplit() = 0;
  matvec_prep_grid_cap() = cap;
  bool ok = true;
  if (mode == 0) {  // reference: prepare_activations, then one matvec per weight
    prepare_activations(p, GgmlType::Q8_K, 1, cols, act.get(), rb, nullptr);
    for (int i = 0; i < n_w; ++i) matvec(dw[i], act.get(), rb, 1, os[i], nullptr);
  } else if (mode == 1) {  // the product prepares its own input
    ok = matvec_rows_prep(dw, os, n_w, &p, nullptr, nullptr, false, act.get<uint8_t>());
  } else {  // prepared input, all weights in one launch
    prepare_activations(p, GgmlType::Q8_K, 1, cols, act.get(), rb, nullptr);
    ok = matvec_rows_prep(dw, os, n_w, nullptr, act.get(), nullptr);
  }
  matvec_rows_per_warp() = saved[0];
  matvec_steps() = saved[1];
  matvec_grid_cap() = saved[2];
  matvec_wide() = saved[3];
  matvec_ksplit() = saved[4];
  matvec_prep_grid_cap() = saved[5];
  if (!ok) throw std::invalid_argument("matvec_rows_prep does not take these weights");
  act_out = to_host<uint8_t>(act, rb);
  return wbt.result();
}

std::vector<float> matvec_mma(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols,
                              const uint8_t* w, size_t w_bytes, const float* x, const float* bias, bool accumulate,
                              int split, int mode, int cap) {
  WeightBatch wbt(types, rows, cols, w, w_bytes, bias, accumulate);
  DeviceBuffer xb = to_device(x, sizeof(float) * cols);
  const size_t rb = act_row_bytes(GgmlType::Q8_K, cols);
  DeviceBuffer act(rb, "test activations");
  ActPrep p;
  p.x = xb.get<float>();
  p.ld_x = cols;
  prepare_activations(p, GgmlType::Q8_K, 1, cols, act.get(), rb, nullptr);
  const SwitchScope mma = matvec_mma_scope(mode, split, cap);
  if (!cuda::matvec_mma(wbt.dw, wbt.os, wbt.n_w, act.get(), nullptr))
    throw std::invalid_argument("matvec_mma does not take these weights");
  return wbt.result();
}

std::vector<float> matvec_bulk(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols,
                               const uint8_t* w, size_t w_bytes, const float* x, const float* bias, bool accumulate,
                               int mode, int cap) {
  WeightBatch wbt(types, rows, cols, w, w_bytes, bias, accumulate);
  DeviceBuffer xb = to_device(x, sizeof(float) * cols);
  const size_t rb = act_row_bytes(GgmlType::Q8_K, cols);
  DeviceBuffer act(rb, "test activations");
  ActPrep p;
  p.x = xb.get<float>();
  p.ld_x = cols;
  prepare_activations(p, GgmlType::Q8_K, 1, cols, act.get(), rb, nullptr);
  const SwitchScope bulk({{&matvec_bulk_mode(), mode}, {&matvec_bulk_grid_cap(), cap}, {&matvec_bulk_min_groups(), 0}});
  if (!cuda::matvec_bulk(wbt.dw, wbt.os, wbt.n_w, act.get(), nullptr))
    throw std::invalid_argument("matvec_bulk does not take these weights");
  return wbt.result();
}

bool matvec_bulk_available() {
  const SwitchScope bulk({{&matvec_bulk_mode(), 1}, {&matvec_bulk_min_groups(), 0}});
  DeviceWeight w;  // never read: a dry run only answers whether the kernel applies
  w.type = GgmlType::Q4_K;
  w.rows = 16;
  w.cols = 256;
  w.row_bytes = 144;
  MatvecOut o;
  return cuda::matvec_bulk(&w, &o, 1, reinterpret_cast<const void*>(16), nullptr, /*dry_run=*/true);
}

std::vector<float> gate_up_glu(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, const float* x,
                               int mode, int cap, int repeats, std::vector<uint8_t>& act_out) {
  const size_t bytes = device_weight_bytes(static_cast<GgmlType>(type), rows, cols);
  if (2 * bytes > w_bytes) throw std::invalid_argument("too few weight bytes (gate, then up)");
  DeviceBuffer gb, ub;
  const DeviceWeight g = upload(type, rows, cols, w, bytes, gb);
  const DeviceWeight u = upload(type, rows, cols, w + bytes, bytes, ub);
  DeviceBuffer xb = to_device(x, sizeof(float) * cols);
  const size_t rb = act_row_bytes(GgmlType::Q8_K, cols), rb_out = act_row_bytes(GgmlType::Q8_K, rows);
  DeviceBuffer act(rb, "test activations");
  ActPrep p;
  p.x = xb.get<float>();
  p.ld_x = cols;
  prepare_activations(p, GgmlType::Q8_K, 1, cols, act.get(), rb, nullptr);
  DeviceBuffer y = poisoned(sizeof(float) * 2 * rows);
  DeviceBuffer out = poisoned(rb_out);
  DeviceBuffer counters(sizeof(int) * (rows / QK_K + 1), "test counters");
  PYRESA_CUDA_CHECK(cudaMemset(counters.get(), 0, counters.bytes()));
  const SwitchScope mma = matvec_mma_scope(0);  // the epilogue's reference: the dp4a kernel it extends
  const int saved[5] = {matvec_rows_per_warp(), matvec_steps(), matvec_grid_cap(), matvec_wide(), matvec_ksplit()};
  matvec_rows_per_warp() = 2;
  matvec_steps() = 2;
  matvec_grid_cap() = cap;
  matvec_wide() = 0;
  matvec_ksplit() = 0;
  bool ok = true;
  if (mode == 0) {  // reference: two products, then prepare_activations(SwiGLU)
    MatvecOut o;
    o.ldy = rows;
    o.y = y.get<float>();
    matvec(g, act.get(), rb, 1, o, nullptr);
    o.y = y.get<float>() + rows;
    matvec(u, act.get(), rb, 1, o, nullptr);
    ActPrep q;
    q.transform = ActTransform::SwiGLU;
    q.x = y.get<float>();
    q.up = y.get<float>() + rows;
    q.ld_x = rows;
    prepare_activations(q, GgmlType::Q8_K, 1, rows, out.get(), rb_out, nullptr);
  } else {
    for (int r = 0; r < repeats && ok; ++r)
      ok = matvec_gate_up_glu(g, u, y.get<float>(), y.get<float>() + rows, act.get(), counters.get<int>(), out.get(),
                              nullptr);
  }
  matvec_rows_per_warp() = saved[0];
  matvec_steps() = saved[1];
  matvec_grid_cap() = saved[2];
  matvec_wide() = saved[3];
  matvec_ksplit() = saved[4];
  if (!ok) throw std::invalid_argument("matvec_gate_up_glu does not take these weights");
  std::vector<int> cnt = to_host<int>(counters, rows / QK_K);
  for (int c : cnt)
    if (c != 0) throw std::runtime_error("gate+up block counters not left at zero");
  act_out = to_host<uint8_t>(out, rb_out);
  return to_host<float>(y, (size_t)2 * rows);
}

std::vector<uint8_t> quantize_rows(int act_type, const float* x, int n, int64_t cols) {
  const GgmlType t = static_cast<GgmlType>(act_type);
  DeviceBuffer xb = to_device(x, sizeof(float) * n * cols);
  const size_t rb = act_row_bytes(t, cols);
  DeviceBuffer out = poisoned(rb * n);
  ActPrep p;
  p.x = xb.get<float>();
  p.ld_x = cols;
  prepare_activations(p, t, n, cols, out.get(), rb, nullptr);
  std::vector<uint8_t> planes = to_host<uint8_t>(out, rb * n);
  // Back to ggml blocks.
  const size_t ggml_rb = t == GgmlType::F16 ? 2 * cols : t == GgmlType::F32 ? 4 * cols : row_size(t, cols);
  std::vector<uint8_t> res(ggml_rb * n);
  for (int r = 0; r < n; ++r) {
    const uint8_t* src = planes.data() + r * rb;
    uint8_t* dst = res.data() + r * ggml_rb;
    if (t == GgmlType::F32 || t == GgmlType::F16) {
      std::memcpy(dst, src, ggml_rb);
    } else if (t == GgmlType::Q8_K) {
      const int64_t nb = cols / QK_K;
      for (int64_t b = 0; b < nb; ++b) {
        block_q8_K blk;
        std::memcpy(&blk.d, src + cols + 4 * b, 4);
        std::memcpy(blk.qs, src + b * QK_K, QK_K);
        std::memcpy(blk.bsums, src + cols + 4 * nb + 32 * b, 32);
        std::memcpy(dst + b * sizeof(block_q8_K), &blk, sizeof blk);
      }
    } else {
      const int64_t nb = cols / 32;
      const size_t bs = t == GgmlType::Q8_0 ? sizeof(block_q8_0) : sizeof(block_q8_1);
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* o = dst + b * bs;
        std::memcpy(o, src + cols + 2 * b, 2);
        if (t == GgmlType::Q8_1) std::memcpy(o + 2, src + cols + 2 * nb + 2 * b, 2);
        std::memcpy(o + (t == GgmlType::Q8_1 ? 4 : 2), src + b * 32, 32);
      }
    }
  }
  return res;
}

std::vector<float> dequantize(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes) {
  DeviceBuffer wb;
  const DeviceWeight dw = upload(type, rows, cols, w, w_bytes, wb);
  std::vector<int32_t> idx(rows);
  for (int64_t i = 0; i < rows; ++i) idx[i] = (int32_t)i;
  DeviceBuffer ib = to_device(idx.data(), sizeof(int32_t) * rows);
  DeviceBuffer out = poisoned(sizeof(float) * rows * cols);
  dequantize_rows_f32(dw, ib.get<int32_t>(), (int)rows, out.get<float>(), cols, nullptr);
  return to_host<float>(out, rows * cols);
}

std::vector<float> transform_rows(int transform, const float* x, const float* up, const float* norm_w, float eps, int n,
                                  int64_t cols) {
  DeviceBuffer xb = to_device(x, sizeof(float) * n * cols);
  DeviceBuffer ub = up ? to_device(up, sizeof(float) * n * cols) : DeviceBuffer();
  DeviceBuffer wb = norm_w ? to_device(norm_w, sizeof(float) * cols) : DeviceBuffer();
  ActPrep p;
  p.transform = static_cast<ActTransform>(transform);
  p.x = xb.get<float>();
  p.up = ub.get<float>();
  p.norm_w = wb.get<float>();
  p.eps = eps;
  p.ld_x = cols;
  const size_t rb = act_row_bytes(GgmlType::F32, cols);
  DeviceBuffer out = poisoned(rb * n);
  prepare_activations(p, GgmlType::F32, n, cols, out.get(), rb, nullptr);
  std::vector<uint8_t> raw = to_host<uint8_t>(out, rb * n);
  std::vector<float> res(n * cols);
  for (int r = 0; r < n; ++r) std::memcpy(&res[r * cols], raw.data() + r * rb, 4 * cols);
  return res;
}

std::vector<float> rope(const float* x, int n, int n_head, int D, int pos0, float freq_base, bool neox) {
  DeviceBuffer xb = to_device(x, sizeof(float) * n * n_head * D);
  DeviceBuffer pb = pos_buffer(pos0);
  RopeStoreArgs a;
  a.q = xb.get<float>();
  a.n = n;
  a.n_head = n_head;
  a.n_kv_head = 0;
  a.D = D;
  a.theta_scale = std::pow(freq_base, -2.0f / D);
  a.neox = neox;
  a.pos_dev = pb.get<int>();
  rope_store(a, nullptr);
  return to_host<float>(xb, (size_t)n * n_head * D);
}

std::vector<float> gemm_f16(const uint16_t* A, const uint16_t* B, int M, int N, int K) {
  DeviceBuffer ab = to_device(A, 2 * (size_t)M * K), bb = to_device(B, 2 * (size_t)N * K);
  DeviceBuffer c = poisoned(sizeof(float) * M * N);
  cuda::gemm_f16(ab.get<__half>(), K, bb.get<__half>(), K, c.get<float>(), N, M, N, K, nullptr, false, nullptr);
  return to_host<float>(c, (size_t)M * N);
}

namespace {
// Deterministic pseudo-random F16 in [-amp, amp) (a hash of the index): a synthetic KV cache.
__global__ void fill_random_f16(__half* x, int64_t n, uint32_t seed, float amp) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    x[i] = __float2half_rn(((h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * amp);
  }
}

// One layer's attention over a [n_kv_head][cap][D] F16 cache (head_stride cap * D): the query and
// output [n_tok][n_head][D]; positions from pos_dev; a split workspace of the size the engine uses.
AttentionArgs layer_attention_args(const DeviceBuffer& q, DeviceBuffer& out, const DeviceBuffer& K,
                                   const DeviceBuffer& V, int64_t cap, int n_tok, int n_head, int n_kv_head, int D,
                                   const DeviceBuffer& pos, int n_splits, DeviceBuffer& work) {
  const size_t wf = attention_work_floats(n_tok, n_head, n_kv_head, D, n_splits);
  work = DeviceBuffer(sizeof(float) * (wf ? wf : 1), "test attention work");
  AttentionArgs a;
  a.q = q.get<float>();
  a.q_stride = (int64_t)n_head * D;
  a.out = out.get<float>();
  a.out_stride = (int64_t)n_head * D;
  a.K = K.get<__half>();
  a.V = V.get<__half>();
  a.head_stride = cap * D;
  a.n_tok = n_tok;
  a.n_head = n_head;
  a.n_kv_head = n_kv_head;
  a.D = D;
  a.pos_dev = pos.get<int>();
  a.n_splits = n_splits;
  a.work = work.get<float>();
  return a;
}
}  // namespace

std::vector<float> attention(const float* q, int n_tok, int n_head, int n_kv_head, int D, const uint16_t* K,
                             const uint16_t* V, int cap, int pos0, const int32_t* blocks, int n_sel, int block_size,
                             float scale, int n_splits, int kernel, int split_query) {
  DeviceBuffer qb = to_device(q, sizeof(float) * n_tok * n_head * D);
  // Cache with a tile of zeroed slack past cap, as the engine allocates it.
  const int cap_alloc = (cap + 63) / 64 * 64 + 64;
  DeviceBuffer kb(2 * (size_t)n_kv_head * cap_alloc * D, "test K"), vb(2 * (size_t)n_kv_head * cap_alloc * D, "test V");
  PYRESA_CUDA_CHECK(cudaMemset(kb.get(), 0, kb.bytes()));
  PYRESA_CUDA_CHECK(cudaMemset(vb.get(), 0, vb.bytes()));
  for (int h = 0; h < n_kv_head; ++h) {
    PYRESA_CUDA_CHECK(cudaMemcpy(kb.get<uint16_t>() + (size_t)h * cap_alloc * D, K + (size_t)h * cap * D,
                                 2 * (size_t)cap * D, cudaMemcpyHostToDevice));
    PYRESA_CUDA_CHECK(cudaMemcpy(vb.get<uint16_t>() + (size_t)h * cap_alloc * D, V + (size_t)h * cap * D,
                                 2 * (size_t)cap * D, cudaMemcpyHostToDevice));
  }
  DeviceBuffer pb = pos_buffer(pos0), nsel = pos_buffer(n_sel);
  DeviceBuffer bl = blocks ? to_device(blocks, sizeof(int32_t) * n_kv_head * n_sel) : DeviceBuffer();
  DeviceBuffer out = poisoned(sizeof(float) * n_tok * n_head * D), work;
  AttentionArgs a = layer_attention_args(qb, out, kb, vb, cap_alloc, n_tok, n_head, n_kv_head, D, pb, n_splits, work);
  DeviceBuffer sync(sizeof(unsigned) * attention_sync_words(n_kv_head), "test attention sync");
  PYRESA_CUDA_CHECK(cudaMemset(sync.get(), 0, sync.bytes()));
  a.sync = sync.get<unsigned>();
  a.blocks = blocks ? bl.get<int32_t>() : nullptr;
  a.blocks_stride = n_sel;
  a.n_sel_dev = nsel.get<int>();
  a.block_size = block_size;
  a.scale = scale;
  a.split_query = blocks != nullptr;  // dense: the query rounded to F16 (prefill's arithmetic)
  if (split_query >= 0) a.split_query = split_query != 0;
  if (kernel) cuda::attention_batched(a, kernel, nullptr);
  else cuda::attention(a, nullptr);
  std::vector<float> r = to_host<float>(out, (size_t)n_tok * n_head * D);
  // The in-kernel combine's counters must be back at zero (the epochs may have moved).
  const std::vector<unsigned> cnt = to_host<unsigned>(sync, attention_sync_words(n_kv_head));
  for (int h = 0; h < n_kv_head; ++h)
    if (cnt[2 * h] != 0) throw std::runtime_error("attention: combine counter not left at zero");
  return r;
}


std::vector<float> attention_timed(const float* q, int n_tok, int n_head, int n_kv_head, int D, int n_ctx, int kernel,
                                   bool precise, bool split_query, int n_splits, int iters, double& ms) {
  // Queries at the end of an n_ctx cache of synthetic keys/values (one layer), as a rectification.
  const int cap = (n_ctx + 63) / 64 * 64 + 64;
  const int64_t n = (int64_t)n_kv_head * cap * D;
  DeviceBuffer kb(2 * n, "bench K"), vb(2 * n, "bench V");
  fill_random_f16<<<1024, 256>>>(kb.get<__half>(), n, 12345u, 1.7f);
  fill_random_f16<<<1024, 256>>>(vb.get<__half>(), n, 67890u, 1.7f);
  PYRESA_CUDA_LAUNCH_CHECK();
  DeviceBuffer qb = to_device(q, sizeof(float) * n_tok * n_head * D);
  DeviceBuffer pb = pos_buffer(n_ctx - n_tok);
  DeviceBuffer out = poisoned(sizeof(float) * n_tok * n_head * D), work;
  AttentionArgs a = layer_attention_args(qb, out, kb, vb, cap, n_tok, n_head, n_kv_head, D, pb, n_splits, work);
  a.scale = 1.0f / std::sqrt((float)D);
  a.precise = precise;
  a.split_query = split_query;
  auto run = [&]() {
    if (kernel) cuda::attention_batched(a, kernel, nullptr);
    else cuda::attention(a, nullptr);
  };
  run();  // warm-up (and the output)
  PYRESA_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  PYRESA_CUDA_CHECK(cudaEventCreate(&e0));
  PYRESA_CUDA_CHECK(cudaEventCreate(&e1));
  PYRESA_CUDA_CHECK(cudaEventRecord(e0));
  for (int i = 0; i < iters; ++i) run();
  PYRESA_CUDA_CHECK(cudaEventRecord(e1));
  PYRESA_CUDA_CHECK(cudaEventSynchronize(e1));
  float t = 0.0f;
  PYRESA_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  ms = t / std::max(1, iters);
  return to_host<float>(out, (size_t)n_tok * n_head * D);
}

bool attention_wgmma_available() { return cuda::attention_wgmma_available(); }

int attention_batched_splits(int n_tok, int n_head, int n_kv_head, int n_keys, int variant) {
  int dev = 0, n_sm = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  return cuda::attention_batched_splits(n_tok, n_head, n_kv_head, n_keys, n_sm, variant);
}

namespace {
DescLayout test_layout(int n_kv_head, int cap, int D, int block_size) {
  DescLayout L;
  L.n_layer = 1;
  L.n_kv_head = n_kv_head;
  L.D = D;
  L.block_size = block_size;
  L.max_blocks = ((cap + block_size - 1) / block_size + 31) / 32 * 32;
  return L;
}
}  // namespace

void descriptors(const uint16_t* K, int n_kv_head, int cap, int D, int n_tokens, int block_size, std::vector<float>& kmin,
                 std::vector<float>& kmax) {
  const DescLayout L = test_layout(n_kv_head, cap, D, block_size);
  DeviceBuffer kb = to_device(K, 2 * (size_t)n_kv_head * cap * D);
  DeviceBuffer db = poisoned(L.elems() * 2);
  DeviceBuffer pb = pos_buffer(0);
  refresh_descriptors(db.get<__half>(), L, 0, kb.get<__half>(), (int64_t)cap * D, pb.get<int>(), 0, n_tokens, nullptr);
  std::vector<uint16_t> d = to_host<uint16_t>(db, L.elems());
  const int nbk = (n_tokens + block_size - 1) / block_size;
  kmin.assign((size_t)n_kv_head * nbk * D, 0.0f);
  kmax.assign((size_t)n_kv_head * nbk * D, 0.0f);
  auto h2f_host = [](uint16_t h) { return fp16_to_fp32(h); };
  for (int h = 0; h < n_kv_head; ++h)
    for (int b = 0; b < nbk; ++b)
      for (int e = 0; e < D; ++e) {
        kmin[((size_t)h * nbk + b) * D + e] = h2f_host(d[L.index(0, h, b, 0, e)]);
        kmax[((size_t)h * nbk + b) * D + e] = h2f_host(d[L.index(0, h, b, 1, e)]);
      }
}

namespace {
// One layer's K, its descriptors, the selection's scratch and outputs (poisoned) and parameters:
// the setup of the selection hooks. run(): select_blocks for one query, the block lists as
// [n_kv_head][n_sel] (n_sel returned too).
struct SelectionRig {
  DescLayout L;
  DeviceBuffer kb, db, keys, bl, ns;
  ResaParams p;
  int n_head, n_kv_head, cap, D;
  SelectionRig(int n_head_, const uint16_t* K, int n_kv_head_, int cap_, int D_, int block_size, double ratio,
               int min_blocks, int local_blocks)
      : L(test_layout(n_kv_head_, cap_, D_, block_size)), n_head(n_head_), n_kv_head(n_kv_head_), cap(cap_), D(D_) {
    kb = to_device(K, 2 * (size_t)n_kv_head * cap * D);
    db = DeviceBuffer(L.elems() * 2, "test descriptors");
    PYRESA_CUDA_CHECK(cudaMemset(db.get(), 0, db.bytes()));
    keys = poisoned(select_scratch_bytes(L));  // one scratch for every call, as the engine's
    bl = poisoned(4 * (size_t)n_kv_head * L.max_blocks);
    ns = poisoned(4);
    p.block_size = block_size;
    p.ratio = ratio;
    p.min_blocks = min_blocks;
    p.local_blocks = local_blocks;
  }
  void refresh(const int* p0_dev, int n_tokens) {
    refresh_descriptors(db.get<__half>(), L, 0, kb.get<__half>(), (int64_t)cap * D, p0_dev, 0, n_tokens, nullptr);
  }
  std::vector<int32_t> run(const float* q_dev, const int* pos_dev, int& n_sel) {
    cuda::select_blocks(q_dev, n_head, db.get<__half>(), L, 0, p, pos_dev, keys.get<uint32_t>(), bl.get<int32_t>(),
                        L.max_blocks, ns.get<int>(), nullptr);
    n_sel = to_host<int>(ns, 1)[0];
    const std::vector<int32_t> all = to_host<int32_t>(bl, (size_t)n_kv_head * L.max_blocks);
    std::vector<int32_t> res((size_t)n_kv_head * n_sel);
    for (int h = 0; h < n_kv_head; ++h)
      std::memcpy(&res[(size_t)h * n_sel], &all[(size_t)h * L.max_blocks], 4 * (size_t)n_sel);
    return res;
  }
};
}  // namespace

std::vector<int32_t> select_blocks(const float* q, int n_head, const uint16_t* K, int n_kv_head, int cap, int D,
                                   int n_tokens, int block_size, double ratio, int min_blocks, int local_blocks,
                                   int& n_sel_out) {
  SelectionRig rig(n_head, K, n_kv_head, cap, D, block_size, ratio, min_blocks, local_blocks);
  DeviceBuffer p0 = pos_buffer(0), pl = pos_buffer(n_tokens - 1);
  rig.refresh(p0.get<int>(), n_tokens);
  DeviceBuffer qb = to_device(q, sizeof(float) * n_head * D);
  return rig.run(qb.get<float>(), pl.get<int>(), n_sel_out);
}

std::vector<std::vector<int32_t>> select_blocks_steps(const float* q, int n_steps, int n_head, const uint16_t* K,
                                                      int n_kv_head, int cap, int D, const int* n_tokens,
                                                      int block_size, double ratio, int min_blocks, int local_blocks) {
  // One rig (one scratch) for every step, as the engine's: what a step leaves in it must not matter.
  SelectionRig rig(n_head, K, n_kv_head, cap, D, block_size, ratio, min_blocks, local_blocks);
  DeviceBuffer p0 = pos_buffer(0), pl = pos_buffer(0);
  DeviceBuffer qb(sizeof(float) * n_head * D, "test query");
  std::vector<std::vector<int32_t>> res;
  for (int s = 0; s < n_steps; ++s) {
    const int n = n_tokens[s], last = n - 1;
    rig.refresh(p0.get<int>(), n);
    PYRESA_CUDA_CHECK(cudaMemcpy(pl.get(), &last, sizeof(int), cudaMemcpyHostToDevice));
    PYRESA_CUDA_CHECK(cudaMemcpy(qb.get(), q + (size_t)s * n_head * D, sizeof(float) * n_head * D,
                                 cudaMemcpyHostToDevice));
    PYRESA_CUDA_CHECK(cudaMemset(rig.bl.get(), 0xFF, rig.bl.bytes()));  // a stale list must not pass for a written one
    int n_sel = 0;
    res.push_back(rig.run(qb.get<float>(), pl.get<int>(), n_sel));
  }
  return res;
}

void set_select_kernels(int topn, int ctas, bool score_trigger, int stop, bool score_early_q) {
  cuda::select_config().topn = topn;
  cuda::select_config().topn_ctas = ctas;
  cuda::select_config().score_trigger = score_trigger;
  cuda::select_config().topn_stop = stop;
  cuda::select_config().score_early_q = score_early_q;
}

int argmax(const float* x, int n, int ctas) {
  DeviceBuffer xb = to_device(x, sizeof(float) * n);
  DeviceBuffer out = poisoned(4);
  DeviceBuffer scratch(cuda::argmax_scratch_bytes(std::max(ctas, 1)), "argmax scratch");
  const cuda::ArgmaxScratch sc = cuda::argmax_scratch(scratch.get(), std::max(ctas, 1));
  cuda::argmax(xb.get<float>(), n, out.get<int32_t>(), nullptr, nullptr, nullptr, &sc);
  // twice: the counter must be back at 0 after a launch
  if (ctas > 1) cuda::argmax(xb.get<float>(), n, out.get<int32_t>(), nullptr, nullptr, nullptr, &sc);
  return to_host<int32_t>(out, 1)[0];
}

std::vector<float> top_candidates(const float* x, int n, int k, const int32_t* penalized, int n_penalized, float penalty,
                                  bool want_sum, std::vector<int32_t>& ids, double& max_out, double& sum_out) {
  DeviceBuffer xb = to_device(x, sizeof(float) * n);
  const int32_t none = 0;
  DeviceBuffer pen = to_device(n_penalized ? penalized : &none, sizeof(int32_t) * std::max(n_penalized, 1));
  DeviceBuffer work = poisoned(sizeof(float) * n);
  const int kk = std::min(k, n);
  DeviceBuffer out_ids = poisoned(sizeof(int32_t) * cuda::kMaxCandidates);
  DeviceBuffer out_vals = poisoned(sizeof(float) * cuda::kMaxCandidates);
  DeviceBuffer stats = poisoned(2 * sizeof(double));
  cuda::TopCandidatesArgs a;
  a.logits = xb.get<float>();
  a.n = n;
  a.k = k;
  a.penalized = pen.get<int32_t>();
  a.n_penalized = n_penalized;
  a.penalty = penalty;
  a.work = work.get<float>();
  a.want_sum = want_sum;
  a.out_ids = out_ids.get<int32_t>();
  a.out_logits = out_vals.get<float>();
  a.stats = stats.get<double>();
  cuda::top_candidates(a, nullptr);
  ids = to_host<int32_t>(out_ids, kk);
  const std::vector<double> st = to_host<double>(stats, 2);
  max_out = st[0];
  sum_out = st[1];
  // The input must be left as it was (the penalty goes to a copy).
  const std::vector<float> after = to_host<float>(xb, n);
  if (std::memcmp(after.data(), x, sizeof(float) * n) != 0) throw std::runtime_error("top_candidates changed its input");
  return to_host<float>(out_vals, kk);
}

void set_sparse_step_kernels(bool decode_attention, int combine, int shape) {
  cuda::decode_attention_enabled() = decode_attention;
  if (combine >= 0) cuda::decode_combine_mode() = combine;
  if (shape >= 0) cuda::decode_attention_shape() = shape;
}

namespace {
// The engine's split count before the decode kernel (attention_splits, one-warp CTAs).
int old_decode_splits(int n_tiles, int n_kv_head, int rows, int D, int n_sm) {
  int s = std::max(1, (8 * n_sm + n_kv_head - 1) / n_kv_head);
  s = std::min(s, std::max(1, n_tiles / 4));
  const size_t per_split = (size_t)n_kv_head * rows * (D + 2) * sizeof(float);
  s = std::min<int>(s, (int)((size_t(64) << 20) / per_split));
  s = std::min(s, 256);
  int p = 1;
  while (p * 2 <= s) p *= 2;
  return p;
}
}  // namespace

std::vector<std::pair<std::string, double>> time_sparse_step(int n_tokens, int reps, int copies, int n_head,
                                                             int n_kv_head, int D, bool select_only, int cap_tokens,
                                                             int sparse_splits) {
  int dev = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  PYRESA_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  pdl_enabled() = prop.major >= 9;
  const int n_sm = prop.multiProcessorCount, G = n_head / n_kv_head;
  const int cap = std::max(cap_tokens, (n_tokens + 63) / 64 * 64 + 64);
  DescLayout L = test_layout(n_kv_head, cap, D, 16);
  L.n_layer = copies;
  const size_t layer_elems = (size_t)n_kv_head * cap * D;
  DeviceBuffer kb(2 * layer_elems * copies, "bench K"), vb(2 * layer_elems * copies, "bench V");
  DeviceBuffer db(2 * L.elems(), "bench descriptors");
  fill_random_f16<<<4 * n_sm, 256>>>(kb.get<__half>(), (int64_t)(layer_elems * copies), 1u, 2.0f);
  fill_random_f16<<<4 * n_sm, 256>>>(vb.get<__half>(), (int64_t)(layer_elems * copies), 2u, 1.0f);
  PYRESA_CUDA_LAUNCH_CHECK();
  DeviceBuffer p0 = pos_buffer(0), pl = pos_buffer(n_tokens - 1);
  for (int l = 0; l < copies; ++l)
    refresh_descriptors(db.get<__half>(), L, l, kb.get<__half>() + l * layer_elems, (int64_t)cap * D, p0.get<int>(), 0,
                        n_tokens, nullptr);
  std::vector<float> qh((size_t)n_head * D);
  uint32_t st = 12345u;
  for (auto& v : qh) {
    st = st * 1664525u + 1013904223u;
    v = ((float)(st >> 8) / 8388608.0f - 1.0f);
  }
  DeviceBuffer qb = to_device(qh.data(), sizeof(float) * qh.size());
  DeviceBuffer keys(select_scratch_bytes(L), "bench keys");
  DeviceBuffer bl(4 * (size_t)n_kv_head * L.max_blocks * copies, "bench blocks");
  DeviceBuffer ns(4 * 64, "bench n_sel");
  DeviceBuffer out(sizeof(float) * n_head * D, "bench out");
  DeviceBuffer work(size_t(64) << 20, "bench work");
  DeviceBuffer sync(sizeof(unsigned) * attention_sync_words(n_kv_head), "bench attention sync");
  PYRESA_CUDA_CHECK(cudaMemset(sync.get(), 0, sync.bytes()));
  ResaParams p;
  const int nbk = (n_tokens + 15) / 16;
  const int n_sel = std::max((int)std::ceil(p.ratio * nbk), std::min(nbk, p.min_blocks));
  const int sparse_tiles = (n_sel + 1) / 2, dense_tiles = (n_tokens + 31) / 32;
  auto splits_for = [&](int n_tiles) {
    const int s = decode_attention_splits(1, n_head, n_kv_head, D, n_tiles, n_sm);
    return s ? std::min(s, 256) : old_decode_splits(n_tiles, n_kv_head, G, D, n_sm);
  };
  auto select = [&](int l) {
    select_blocks(qb.get<float>(), n_head, db.get<__half>(), L, l, p, pl.get<int>(), keys.get<uint32_t>(),
                  bl.get<int32_t>() + (size_t)l * n_kv_head * L.max_blocks, L.max_blocks, ns.get<int>(), nullptr);
  };
  // The first n_sel blocks of each head, in order: the same bytes as a selection, contiguous.
  std::vector<int32_t> contig((size_t)n_kv_head * L.max_blocks, 0);
  for (int h = 0; h < n_kv_head; ++h)
    for (int j = 0; j < L.max_blocks; ++j) contig[(size_t)h * L.max_blocks + j] = j;
  DeviceBuffer cb = to_device(contig.data(), sizeof(int32_t) * contig.size());
  auto attend = [&](int l, bool sparse, int variant = 0) {  // variant 1: partials only; 2: contiguous blocks
    AttentionArgs a;
    a.q = qb.get<float>();
    a.q_stride = (int64_t)n_head * D;
    a.out = out.get<float>();
    a.out_stride = (int64_t)n_head * D;
    a.K = kb.get<__half>() + l * layer_elems;
    a.V = vb.get<__half>() + l * layer_elems;
    a.head_stride = (int64_t)cap * D;
    a.n_tok = 1;
    a.n_head = n_head;
    a.n_kv_head = n_kv_head;
    a.D = D;
    a.pos_dev = pl.get<int>();
    a.block_size = 16;
    a.scale = 1.0f / std::sqrt((float)D);
    a.work = work.get<float>();
    a.sync = sync.get<unsigned>();
    a.split_query = true;
    a.precise = true;
    if (sparse) {
      a.blocks = variant == 2 ? cb.get<int32_t>() : bl.get<int32_t>() + (size_t)l * n_kv_head * L.max_blocks;
      a.blocks_stride = L.max_blocks;
      a.n_sel_dev = ns.get<int>();
    }
    a.n_splits = sparse && sparse_splits > 0 ? sparse_splits : splits_for(sparse ? sparse_tiles : dense_tiles);
    if (variant == 1 && decode_attention_applies(1, n_head, n_kv_head, D)) attention_decode_partials(a, nullptr);
    else attention(a, nullptr);
  };
  for (int l = 0; l < copies; ++l) select(l);  // every copy's block list, and warm-up
  cudaEvent_t e0, e1;
  PYRESA_CUDA_CHECK(cudaEventCreate(&e0));
  PYRESA_CUDA_CHECK(cudaEventCreate(&e1));
  auto time_us = [&](auto&& body) {
    for (int i = 0; i < copies; ++i) body(i % copies);
    PYRESA_CUDA_CHECK(cudaEventRecord(e0, nullptr));
    for (int i = 0; i < reps; ++i) body(i % copies);
    PYRESA_CUDA_CHECK(cudaEventRecord(e1, nullptr));
    PYRESA_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    PYRESA_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return 1000.0 * ms / reps;
  };
  std::vector<std::pair<std::string, double>> r;
  r.emplace_back("select_us", time_us([&](int l) { select(l); }));
  r.emplace_back("score_us", time_us([&](int l) {
                   score_blocks(qb.get<float>(), n_head, db.get<__half>(), L, l, p, pl.get<int>(), keys.get<uint32_t>(),
                                nullptr);
                 }));
  r.emplace_back("topn_us", time_us([&](int l) {
                   select_top_blocks(L, p, pl.get<int>(), keys.get<uint32_t>(),
                                     bl.get<int32_t>() + (size_t)l * n_kv_head * L.max_blocks, L.max_blocks,
                                     ns.get<int>(), nullptr);
                 }));
  if (select_only) {
    r.emplace_back("n_sel", n_sel);
    PYRESA_CUDA_CHECK(cudaEventDestroy(e0));
    PYRESA_CUDA_CHECK(cudaEventDestroy(e1));
    return r;
  }
  r.emplace_back("sparse_attention_us", time_us([&](int l) { attend(l, true); }));
  r.emplace_back("sparse_partials_us", time_us([&](int l) { attend(l, true, 1); }));
  r.emplace_back("sparse_contig_us", time_us([&](int l) { attend(l, true, 2); }));
  r.emplace_back("sparse_step_us", time_us([&](int l) {
                   select(l);
                   attend(l, true);
                 }));
  r.emplace_back("dense_attention_us", time_us([&](int l) { attend(l, false); }));
  r.emplace_back("sparse_splits", sparse_splits > 0 ? sparse_splits : splits_for(sparse_tiles));
  r.emplace_back("dense_splits", splits_for(dense_tiles));
  r.emplace_back("n_sel", n_sel);
  PYRESA_CUDA_CHECK(cudaEventDestroy(e0));
  PYRESA_CUDA_CHECK(cudaEventDestroy(e1));
  return r;
}

double time_dqmm(int type, int64_t rows, int64_t cols, int M, int path, int reps) {
  int dev = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  PYRESA_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  pdl_enabled() = prop.major >= 9;
  const GgmlType t = static_cast<GgmlType>(type);
  const size_t wbytes = device_weight_bytes(t, rows, cols);
  const int copies = (int)std::max<size_t>(1, std::min<size_t>(64, ((size_t)256 << 20) / wbytes + 1));  // > L2
  DeviceBuffer wb(wbytes * copies, "bench weights");
  // Small finite halves everywhere: every scale field of every format is a finite number.
  fill_random_f16<<<1024, 256>>>(wb.get<__half>(), (int64_t)(wbytes * copies / 2), 777u, 0.01f);
  const int64_t lda = (cols + 7) / 8 * 8;
  DeviceBuffer ab(sizeof(__half) * M * lda, "bench activations");
  fill_random_f16<<<256, 256>>>(ab.get<__half>(), (int64_t)M * lda, 99u, 1.0f);
  PYRESA_CUDA_LAUNCH_CHECK();
  DeviceBuffer y(sizeof(float) * M * rows, "bench output"), ws(size_t(32) << 20, "bench workspace");
  std::vector<DeviceWeight> ws_w(copies);
  for (int c = 0; c < copies; ++c) {
    DeviceWeight& w = ws_w[c];
    w.type = t;
    w.rows = rows;
    w.cols = cols;
    w.data = wb.get<uint8_t>() + c * wbytes;
    w.row_bytes = row_size(t, cols);
  }
  const bool mmq = path >= 5 && path <= 9;
  const DqmmPathScope kernel(mmq ? 0 : path);
  const SwitchScope mmq_scope = small_mmq_scope(path == 6 ? 2 : path == 7 ? 3 : path == 8 ? 4 : 0, 0, path == 9 ? 2 : 1);
  // matmul_mma's input: the random F16 activations as floats, quantized to Q8_K
  const size_t qrb = act_row_bytes(GgmlType::Q8_K, cols);
  DeviceBuffer xf(sizeof(float) * M * cols, "bench activations"), aq(qrb * M, "bench activations");
  if (mmq) {
    std::vector<uint16_t> hh((size_t)M * lda);
    PYRESA_CUDA_CHECK(cudaMemcpy(hh.data(), ab.get(), hh.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> xh((size_t)M * cols);
    for (int m = 0; m < M; ++m)
      for (int64_t k = 0; k < cols; ++k) xh[(size_t)m * cols + k] = fp16_to_fp32(hh[(size_t)m * lda + k]);
    PYRESA_CUDA_CHECK(cudaMemcpy(xf.get(), xh.data(), xh.size() * 4, cudaMemcpyHostToDevice));
    ActPrep p;
    p.x = xf.get<float>();
    p.ld_x = cols;
    prepare_activations(p, GgmlType::Q8_K, M, cols, aq.get(), qrb, nullptr);
  }
  cudaStream_t s;
  PYRESA_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto call = [&](int i) {
    if (mmq) {
      if (!matmul_mma(ws_w[i % copies], aq.get(), qrb, M, y.get<float>(), rows, nullptr, false, prop.multiProcessorCount,
                      ws.get<float>(), ws.bytes() / 4, s))
        throw std::invalid_argument("matmul_mma does not take these weights");
      return;
    }
    dequant_matmul_small(ws_w[i % copies], ab.get<__half>(), lda, M, y.get<float>(), rows, nullptr, false,
                         prop.multiProcessorCount, ws.get<float>(), ws.bytes() / 4, s);
  };
  for (int i = 0; i < 3; ++i) call(i);
  cudaEvent_t e0, e1;
  PYRESA_CUDA_CHECK(cudaEventCreate(&e0));
  PYRESA_CUDA_CHECK(cudaEventCreate(&e1));
  PYRESA_CUDA_CHECK(cudaEventRecord(e0, s));
  for (int i = 0; i < reps; ++i) call(i + 3);
  PYRESA_CUDA_CHECK(cudaEventRecord(e1, s));
  PYRESA_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  PYRESA_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(s);
  return 1000.0 * ms / reps;
}

}  // namespace pyresa::cuda_test
