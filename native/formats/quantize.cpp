// Dispatch from a ggml type to its weight quantizer, and row-parallel quantization of a matrix.
#include "formats/quantize.h"

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pyresa {

QuantizeRowFn weight_quantizer(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return quantize_row_f32;
    case GgmlType::F16: return quantize_row_f16;
    case GgmlType::BF16: return quantize_row_bf16;
    case GgmlType::Q4_0: return quantize_row_q4_0;
    case GgmlType::Q4_1: return quantize_row_q4_1;
    case GgmlType::Q5_0: return quantize_row_q5_0;
    case GgmlType::Q5_1: return quantize_row_q5_1;
    case GgmlType::Q8_0: return quantize_row_q8_0;
    case GgmlType::Q4_K: return quantize_row_q4_K;
    case GgmlType::Q5_K: return quantize_row_q5_K;
    case GgmlType::Q6_K: return quantize_row_q6_K;
    default: return nullptr;
  }
}

void quantize_rows(GgmlType type, const float* src, void* dst, int64_t n_rows, int64_t n_cols, int n_threads) {
  const QuantizeRowFn fn = weight_quantizer(type);
  if (!fn) throw std::invalid_argument(std::string("no weight quantizer for type ") + type_traits(type).name);
  const size_t out_row = row_size(type, n_cols);  // throws when n_cols is not a multiple of the block
  if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
  // Small tensors are not worth a thread each: aim for at least ~1M elements per thread.
  const int64_t by_size = std::max<int64_t>(1, (n_rows * n_cols) >> 20);
  n_threads = (int)std::min<int64_t>({(int64_t)n_threads, n_rows, by_size});
  n_threads = std::max(1, n_threads);

  auto work = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) fn(src + r * n_cols, static_cast<uint8_t*>(dst) + r * out_row, n_cols);
  };
  if (n_threads == 1) {
    work(0, n_rows);
    return;
  }
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(n_threads);
  const int64_t per = (n_rows + n_threads - 1) / n_threads;
  for (int t = 0; t < n_threads; t++) {
    const int64_t r0 = t * per, r1 = std::min(n_rows, r0 + per);
    if (r0 >= r1) break;
    threads.emplace_back([&, t, r0, r1] {
      try {
        work(r0, r1);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace pyresa
