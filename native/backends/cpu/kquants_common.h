// Shared by kquants_scalar.cpp, kquants_avx2.cpp and kquants_avx512.cpp: the packing of
// Q4_K/Q5_K scales and mins, Q8_K's scale rule, and the weight-stream prefetch.
//
// Everything here has internal linkage on purpose: these files are compiled with different
// ISA flags, and an ordinary inline function would be emitted once per file and merged by
// the linker, which may then run an AVX-512 copy on a CPU without AVX-512.
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __AVX2__
#include <immintrin.h>
#endif

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

// Software prefetch of the weight stream, this many bytes ahead of the block being read.
// A matrix-vector product reads each weight once, in order; on the development machine
// (Zen 5, one thread) the hardware prefetchers alone left Q4_K at ~24 GB/s from DRAM with
// 18944-wide rows, and 16 KiB ahead brought it to ~41 GB/s, its in-cache speed. Prefetches
// past the end of the matrix are harmless (they never fault).
constexpr int kPrefetchBytes = 16384;

template <typename Block>
inline void prefetch_ahead(const Block* b) {
  const char* p = reinterpret_cast<const char*>(b) + kPrefetchBytes;
  for (size_t off = 0; off < sizeof(Block); off += 64) __builtin_prefetch(p + off, 0, 3);
}

#ifdef __AVX2__
// The same unpacking in SIMD registers (no round trip through memory): bytes 0-7 of the result
// are the scales, bytes 8-15 the mins. Reads 16 bytes at `packed`; the 4 past the scales are
// the block's quants, so this never leaves the block.
inline __m128i unpack_scales_mins_sse(const uint8_t* packed) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));  // w0 w1 w2 -
  const __m128i a = _mm_shuffle_epi32(w, _MM_SHUFFLE(2, 1, 2, 0));             // w0 w2 w1 w2
  const __m128i b = _mm_shuffle_epi32(w, _MM_SHUFFLE(1, 1, 0, 0));             // w0 w0 w1 w1
  const __m128i low = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)),
                                    _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
  const __m128i high = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
  return _mm_or_si128(low, high);
}
#endif

// Q8_K, as ggml defines it: per block of 256, take the value `vmax` of largest magnitude
// (the first one on ties), iscale = -127 / vmax, q = round_half_even(iscale * x), d = 1 / iscale.
// So d is negative when vmax is positive; x ≈ d*q with |q| <= 127. An all-zero block has d = 0.
// Every ISA computes iscale and iscale*x in the same float operations, so the bytes agree.
inline float q8k_iscale(float vmax) { return vmax == 0.0f ? 0.0f : -127.0f / vmax; }

}  // namespace
}  // namespace pyresa::cpu
