#include "backends/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace {

// Rows per work item: a multiple of 16 (a 64-byte line of float outputs), about 4 items per
// thread so a busy core does not hold the rest up, and never tiny: every item costs an atomic
// increment on a cache line both cores fight over (~0.1-0.2 us), as much as a 16-row Q8_0 item
// of work in a decode step (measured: 16-row items made two threads slower than one).
int64_t rows_per_chunk(int64_t rows, int n_threads) {
  const int64_t target = (rows + 4 * n_threads - 1) / (4 * n_threads);
  return std::max<int64_t>(16, (target + 15) / 16 * 16);
}

// Tokens per pass of the multi-row kernel over a chunk of weight rows: 32 rows of Q8_1 activations
// at 1,536 columns are 55 KiB, about what L1 + the near part of L2 serve at full speed.
constexpr int kTokensPerPass = 32;

void quantize_activations(GgmlType act_type, int64_t cols, const float* x, int n_tokens,
                          ThreadPool& pool, MatmulScratch& scratch, size_t& act_row_bytes) {
  const auto& k = cpu_kernels().types[static_cast<int>(act_type)];
  if (!k.quantize_row)
    throw std::runtime_error(std::string("no activation quantizer for ") + type_traits(act_type).name);
  act_row_bytes = row_size(act_type, cols);
  size_t need = act_row_bytes * n_tokens;
  if (scratch.quantized.size() < need) scratch.quantized.resize(need);
  uint8_t* dst = scratch.quantized.data();
  if (n_tokens == 1) {
    k.quantize_row(x, dst, cols);
    return;
  }
  pool.run([&](int ith, int nth) {
    for (int t = ith; t < n_tokens; t += nth) k.quantize_row(x + t * cols, dst + t * act_row_bytes, cols);
  });
}

}  // namespace

void matmul_multi(const MatmulOutput* outs, int n_outs, const float* x, int n_tokens,
                  ThreadPool& pool, MatmulScratch& scratch) {
  const WeightView& w0 = *outs[0].w;
  const GgmlType act_type = type_traits(w0.type).vec_dot_type;
  for (int i = 1; i < n_outs; ++i) {
    if (outs[i].w->cols != w0.cols || type_traits(outs[i].w->type).vec_dot_type != act_type) {
      // Mixed activation formats (e.g. a Q8_0 tensor beside Q4_K ones): one product each.
      for (int j = 0; j < n_outs; ++j) matmul_multi(&outs[j], 1, x, n_tokens, pool, scratch);
      return;
    }
  }
  size_t act_row_bytes = 0;
  quantize_activations(act_type, w0.cols, x, n_tokens, pool, scratch, act_row_bytes);
  const uint8_t* act = scratch.quantized.data();

  // Work items: (output, chunk of rows), handed out dynamically so a busy core does not stall the rest.
  if (n_outs > 8) throw std::logic_error("matmul_multi: at most 8 outputs");
  int64_t chunk_start[8], chunk_rows[8];
  int64_t total_chunks = 0;
  for (int i = 0; i < n_outs; ++i) {
    chunk_start[i] = total_chunks;
    chunk_rows[i] = rows_per_chunk(outs[i].w->rows, pool.size());
    total_chunks += (outs[i].w->rows + chunk_rows[i] - 1) / chunk_rows[i];
  }
  std::atomic<int64_t> next{0};
  pool.run([&](int, int) {
    for (;;) {
      int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= total_chunks) break;
      int o = 0;
      while (o + 1 < n_outs && c >= chunk_start[o + 1]) ++o;
      const MatmulOutput& out = outs[o];
      const WeightView& w = *out.w;
      const TypeKernels& k = cpu_kernels().types[static_cast<int>(w.type)];
      const auto vec_dot = k.vec_dot;
      int64_t r0 = (c - chunk_start[o]) * chunk_rows[o];
      int64_t r1 = std::min(r0 + chunk_rows[o], w.rows);
      if (n_tokens > 1 && k.vec_dot_rows) {
        // Each weight row against a block of tokens, so its blocks are unpacked once per few
        // tokens; blocks of kTokensPerPass keep those tokens' activations in L1/L2.
        for (int t0 = 0; t0 < n_tokens; t0 += kTokensPerPass) {
          const int nt = std::min(kTokensPerPass, n_tokens - t0);
          const uint8_t* a = act + t0 * act_row_bytes;
          float* y = out.y + static_cast<int64_t>(t0) * w.rows;
          for (int64_t r = r0; r < r1; ++r) {
            k.vec_dot_rows(w.cols, w.row(r), a, act_row_bytes, nt, y + r, static_cast<size_t>(w.rows));
            if (out.bias)
              for (int t = 0; t < nt; ++t) y[t * w.rows + r] += out.bias[r];
          }
        }
        continue;
      }
      for (int t = 0; t < n_tokens; ++t) {
        const uint8_t* a = act + t * act_row_bytes;
        float* y = out.y + static_cast<int64_t>(t) * w.rows;
        for (int64_t r = r0; r < r1; ++r) {
          float v = vec_dot(w.cols, w.row(r), a);
          y[r] = out.bias ? v + out.bias[r] : v;
        }
      }
    }
  });
}

void matmul(const WeightView& w, const float* x, int n_tokens, float* y, const float* bias,
            ThreadPool& pool, MatmulScratch& scratch) {
  MatmulOutput out{&w, y, bias};
  matmul_multi(&out, 1, x, n_tokens, pool, scratch);
}

void dequantize_weight_row(const WeightView& w, int64_t r, float* dst) {
  cpu_kernels().types[static_cast<int>(w.type)].dequantize_row(w.row(r), dst, w.cols);
}

}  // namespace pyresa::cpu
