// Pieces of the legacy-format kernels that every ISA must compute identically, so the
// activation quantizers give the same bytes whatever kernel set is active.
#pragma once
#include <cmath>

#include "formats/fp16.h"
#include "formats/ggml_types.h"

namespace pyresa::cpu::legacy {

// Scale of one Q8_0/Q8_1 activation block from its largest magnitude: d = amax / 127,
// stored as fp16, and the multiplier 127 / amax used to round x to q. This is ggml's x86
// rule, kept bit for bit: the model's logits are sensitive enough to activation rounding
// that any other rule (e.g. 1 / d_stored, which bounds |x - d_stored q| by d/2 instead of
// ~0.56 d) moves llama.cpp parity by a few percent of top-1 tokens. Q8_1's s is computed
// from the unrounded d, as ggml does. Callers clamp q to [-127, 127].
inline float q8_block_scale(float amax, fp16_t* d_stored) {
  const float d = amax / 127.0f;
  *d_stored = fp32_to_fp16(d);
  return amax != 0.0f ? 127.0f / amax : 0.0f;  // ggml's x86 quantizers use 127/amax
}

}  // namespace pyresa::cpu::legacy
