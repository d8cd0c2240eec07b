// ggml-compatible tensor types and quantization block layouts.
// The structs match ggml's byte for byte (checked by static_assert), so GGUF tensor data
// is used in place: a row of a quantized matrix is an array of these blocks.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pyresa {

// Values are ggml's `enum ggml_type`, as stored in GGUF tensor infos.
enum class GgmlType : int32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};
constexpr int kGgmlTypeCount = 40;  // upper bound of the ids above, for tables

using fp16_t = uint16_t;  // IEEE half, stored as bits
using bf16_t = uint16_t;  // bfloat16, stored as bits

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

// x = d * (q - 8); q in qs: low nibbles are elements 0..15, high nibbles 16..31.
struct block_q4_0 { fp16_t d; uint8_t qs[QK4_0 / 2]; };
// x = d * q + m
struct block_q4_1 { fp16_t d; fp16_t m; uint8_t qs[QK4_1 / 2]; };
// x = d * (q - 16); bit 4 of element j is bit j of qh
struct block_q5_0 { fp16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
// x = d * q + m
struct block_q5_1 { fp16_t d; fp16_t m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
// x = d * q
struct block_q8_0 { fp16_t d; int8_t qs[QK8_0]; };
// activation format for Q4_1/Q5_1 dots: s = d * sum(qs)
struct block_q8_1 { fp16_t d; fp16_t s; int8_t qs[QK8_1]; };

// Super-blocks of 256 with 8 sub-blocks of 32; 6-bit scales and mins packed in `scales`.
struct block_q4_K { fp16_t d; fp16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct block_q5_K { fp16_t d; fp16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
// 16 sub-blocks of 16 with signed 8-bit scales; x = d * scale * (q - 32)
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; fp16_t d; };
// activation format for K-quant dots: bsums are sums of groups of 16 quants
struct block_q8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };

static_assert(sizeof(block_q4_0) == 18, "ggml block_q4_0 layout");
static_assert(sizeof(block_q4_1) == 20, "ggml block_q4_1 layout");
static_assert(sizeof(block_q5_0) == 22, "ggml block_q5_0 layout");
static_assert(sizeof(block_q5_1) == 24, "ggml block_q5_1 layout");
static_assert(sizeof(block_q8_0) == 34, "ggml block_q8_0 layout");
static_assert(sizeof(block_q8_1) == 36, "ggml block_q8_1 layout");
static_assert(sizeof(block_q4_K) == 144, "ggml block_q4_K layout");
static_assert(sizeof(block_q5_K) == 176, "ggml block_q5_K layout");
static_assert(sizeof(block_q6_K) == 210, "ggml block_q6_K layout");
static_assert(sizeof(block_q8_K) == 292, "ggml block_q8_K layout");

struct TypeTraits {
  const char* name;
  int block_size;     // elements per block (1 for float types)
  int type_size;      // bytes per block
  bool supported;     // can be a weight in pyresa
  GgmlType vec_dot_type;  // format activations are quantized to for dot products
};

const TypeTraits& type_traits(GgmlType t);
bool is_valid_type(int32_t id);
size_t row_size(GgmlType t, int64_t n_elements);  // bytes of a row; n must be a multiple of block_size

}  // namespace pyresa
