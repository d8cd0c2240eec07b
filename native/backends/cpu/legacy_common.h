// Pieces of the legacy-format kernels that every ISA must compute identically, so the
// activation quantizers give the same bytes whatever kernel set is active.
#pragma once
#include <cmath>

#include "formats/fp16.h"
#include "formats/ggml_types.h"

namespace pyresa::cpu::legacy {

// Scale of one Q8_0/Q8_1 activation block from its largest magnitude: d = amax / 127,
// stored as fp16. Returns the reciprocal of the *stored* (rounded) scale, so that
// q = round(x * inv) reconstructs x as d_stored * q within d_stored / 2: using the
// unrounded d (as ggml's reference does) would add up to 127 * |d - d_stored| ≈ 0.06 d.
// |x * inv| <= 127 * (1 + 2^-11) + rounding, which still rounds to 127 for normal d;
// callers clamp to [-127, 127] for the subnormal-d corner where it could not.
inline float q8_block_scale(float amax, fp16_t* d_stored) {
  const float d = amax / 127.0f;
  *d_stored = fp32_to_fp16(d);
  return amax != 0.0f ? 127.0f / amax : 0.0f;  // ggml's x86 quantizers use 127/amax
}

}  // namespace pyresa::cpu::legacy
