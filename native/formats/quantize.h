// Float32 -> ggml block quantizers, used by pyresa-convert to write weights.
//
// These are weight quantizers (offline, quality first), not the activation quantizers of the
// CPU kernels (speed first). Legacy types use ggml's reference rounding, so their bytes equal
// gguf-py's `gguf.quants.quantize`; K-quants search each sub-block's scale and min to minimise
// a weighted squared error, then re-fit the quants to the 6/8-bit quantized scales.
#pragma once
#include <cstdint>

#include "formats/ggml_types.h"

namespace pyresa {

// One row of n floats (a multiple of the type's block size) into `dst`, row_size(type, n) bytes.
using QuantizeRowFn = void (*)(const float* src, void* dst, int64_t n);

void quantize_row_f32(const float* src, void* dst, int64_t n);
void quantize_row_f16(const float* src, void* dst, int64_t n);
void quantize_row_bf16(const float* src, void* dst, int64_t n);
void quantize_row_q4_0(const float* src, void* dst, int64_t n);
void quantize_row_q4_1(const float* src, void* dst, int64_t n);
void quantize_row_q5_0(const float* src, void* dst, int64_t n);
void quantize_row_q5_1(const float* src, void* dst, int64_t n);
void quantize_row_q8_0(const float* src, void* dst, int64_t n);
void quantize_row_q4_K(const float* src, void* dst, int64_t n);
void quantize_row_q5_K(const float* src, void* dst, int64_t n);
void quantize_row_q6_K(const float* src, void* dst, int64_t n);

// The quantizer for a type, or nullptr when pyresa cannot write that type.
QuantizeRowFn weight_quantizer(GgmlType type);

// n_rows rows of n_cols floats (row-major) into consecutive rows of `type`, split over
// n_threads threads (0: the machine's hardware threads). Throws std::invalid_argument for an
// unsupported type or a row length that is not a multiple of the block size.
void quantize_rows(GgmlType type, const float* src, void* dst, int64_t n_rows, int64_t n_cols, int n_threads);

}  // namespace pyresa
