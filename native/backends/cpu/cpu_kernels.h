// The CPU backend's kernel table. Each instruction set (scalar, avx2, avx512) fills one
// table in its own translation unit, compiled with that ISA's flags; cpu_kernels() returns
// the best one the running CPU supports (chosen at run time, never -march=native).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "formats/ggml_types.h"

namespace pyresa::cpu {

struct TypeKernels {
  // Weight rows -> float. n is a multiple of the type's block size.
  void (*dequantize_row)(const void* src, float* dst, int64_t n) = nullptr;
  // Float -> this type (set for activation formats: F32, Q8_0, Q8_1, Q8_K).
  void (*quantize_row)(const float* src, void* dst, int64_t n) = nullptr;
  // Dot product of a weight row of this type with an activation row already in the
  // type's vec_dot_type (traits). Integer SIMD for quantized types, as ggml does.
  float (*vec_dot)(int64_t n, const void* weight_row, const void* activation_row) = nullptr;
  // Optional: vec_dot of one weight row with n_acts activation rows act_stride bytes apart,
  // out[i * out_stride] = vec_dot(n, weight_row, acts + i * act_stride), bit for bit, with the
  // weight blocks unpacked once for several rows (batched prefill and rectification). Null: the
  // caller loops over vec_dot.
  void (*vec_dot_rows)(int64_t n, const void* weight_row, const void* acts, size_t act_stride, int n_acts,
                       float* out, size_t out_stride) = nullptr;
};

struct CpuKernels {
  const char* isa = "none";
  TypeKernels types[kGgmlTypeCount];

  // Float helpers used by attention and the KV cache (F16 storage, F32 math).
  float (*dot_f32_f16)(const float* a, const fp16_t* b, int n) = nullptr;
  void (*axpy_f16)(float alpha, const fp16_t* x, float* y, int n) = nullptr;  // y += alpha * x
  void (*fp32_to_fp16_row)(const float* src, fp16_t* dst, int n) = nullptr;
  void (*fp16_to_fp32_row)(const fp16_t* src, float* dst, int n) = nullptr;

};

// One table per ISA, defined in kernels_<isa>.cpp. Returns nullptr if not compiled in.
const CpuKernels* kernels_scalar();
const CpuKernels* kernels_avx2();
const CpuKernels* kernels_avx512();

// The active table: the best supported ISA, or the one forced with set_cpu_isa() or the
// PYRESA_CPU_ISA environment variable ("scalar", "avx2", "avx512").
const CpuKernels& cpu_kernels();
void set_cpu_isa(const std::string& isa);  // "auto" or an ISA name; throws if unsupported
std::vector<std::string> supported_isas();  // ISAs this CPU can run, best last

}  // namespace pyresa::cpu
