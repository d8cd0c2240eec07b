// Shared by kquants_scalar.cpp, kquants_avx2.cpp and kquants_avx512.cpp: the packing of
// Q4_K/Q5_K scales and mins, and Q8_K's rounding rule.
//
// Everything here has internal linkage on purpose: these files are compiled with different
// ISA flags, and an ordinary inline function would be emitted once per file and merged by
// the linker, which may then run an AVX-512 copy on a CPU without AVX-512.
#pragma once
#include <cstdint>
#include <cstring>

#include "formats/ggml_types.h"

// Dequantization must match gguf's (numpy) arithmetic bit for bit: y = (d*sc)*q - (dmin*m) with
// two roundings. GCC would otherwise fuse the multiply and subtract into an FMA in the -mfma
// files. Explicit _mm*_fmadd_ps intrinsics in the dot products are not affected.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace pyresa::cpu {
namespace {

// The 12 bytes of Q4_K/Q5_K `scales` hold 8 six-bit scales and 8 six-bit mins:
//   bytes 0-3:  scale j (j<4) in bits 0-5, bits 4-5 of scale j+4 in bits 6-7
//   bytes 4-7:  min j   (j<4) in bits 0-5, bits 4-5 of min j+4   in bits 6-7
//   bytes 8-11: low 4 bits of scale j+4 in bits 0-3, low 4 bits of min j+4 in bits 4-7
// Working on three 32-bit words unpacks four sub-blocks at a time.
struct ScalesMins {
  uint8_t sc[8];
  uint8_t m[8];
};

inline ScalesMins unpack_scales_mins(const uint8_t* packed) {
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, bits45 = 0x30303030u;
  const uint32_t sc_lo = w[0] & low6;
  const uint32_t m_lo = w[1] & low6;
  const uint32_t sc_hi = (w[2] & low4) | ((w[0] >> 2) & bits45);
  const uint32_t m_hi = ((w[2] >> 4) & low4) | ((w[1] >> 2) & bits45);
  ScalesMins out;
  std::memcpy(out.sc, &sc_lo, 4);
  std::memcpy(out.sc + 4, &sc_hi, 4);
  std::memcpy(out.m, &m_lo, 4);
  std::memcpy(out.m + 4, &m_hi, 4);
  return out;
}

// Q8_K, as ggml defines it: per block of 256, take the value `vmax` of largest magnitude
// (the first one on ties), iscale = -127 / vmax, q = round_half_even(iscale * x), d = 1 / iscale.
// So d is negative when vmax is positive; x ≈ d*q with |q| <= 127. An all-zero block has d = 0.
// Every ISA computes iscale and iscale*x in the same float operations, so the bytes agree.
inline float q8k_iscale(float vmax) { return vmax == 0.0f ? 0.0f : -127.0f / vmax; }

}  // namespace
}  // namespace pyresa::cpu
