// Half and bfloat16 conversions, portable (no F16C needed; ISA files use their own intrinsics).
#pragma once
#include <cstdint>
#include <cstring>

namespace pyresa {

inline float fp16_to_fp32(uint16_t h) {
  // Exact conversion by bit manipulation, subnormals included.
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24
      float f = (float)mant * (1.0f / 16777216.0f);
      uint32_t fb;
      std::memcpy(&fb, &f, 4);
      bits = sign | fb;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline uint16_t fp32_to_fp16(float f) {
  // Round to nearest even, as F16C's _cvtss_sh(x, 0) and numpy do.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or nan
    return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  }
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // overflow to inf
  if (absx < 0x38800000u) {  // subnormal or zero in half
    float af;
    std::memcpy(&af, &absx, 4);
    // scale so the half subnormal unit (2^-24) becomes 1, round to nearest even
    float scaled = af * 16777216.0f;
    uint32_t m = (uint32_t)scaled;
    float frac = scaled - (float)m;
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t mant = absx & 0x7fffffu;
  uint32_t exp = (absx >> 23) - 112;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

inline float bf16_to_fp32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline uint16_t fp32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64);  // quiet nan
  return (uint16_t)((x + (0x7fffu + ((x >> 16) & 1u))) >> 16);  // round to nearest even
}

}  // namespace pyresa
