// How much of a decode step's true attention a block selection keeps: the diagnostic that tells
// whether a ReSA setting can be accurate on a model, and the oracle that bounds every selection
// rule (no rule built on descriptors can keep more mass with the same number of blocks).
//
// Both read every key of the context (a dense step's cost and more), so they run only when asked
// (ResaParams::audit or Selection::Oracle), never in a normal decode step.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/ggml_types.h"

namespace pyresa::cpu {

// Softmax attention mass per block of one KV head, averaged over the GQA group's query heads:
//   mass[b] = (1/group) Σ_g Σ_{t in block b, t < n_tokens} softmax_t(scale · q_g · k_t)
// so Σ_b mass[b] = 1.
//   q: [group][D] F32 (post-RoPE); K: F16, token t at (char*)K + t*k_nb1; mass: [n_blocks].
// Probabilities in float, sums in double.
void block_attention_mass(const float* q, int group, int D, const fp16_t* K, size_t k_nb1, int64_t n_tokens,
                          int block_size, float scale, double* mass);

// The oracle selection: the last n_local blocks, then the n_sel - n_local blocks of largest mass
// among the others (ties to the lower index), ascending in `row` [n_sel].
void select_blocks_by_mass(const double* mass, int64_t n_blocks, int64_t n_sel, int64_t n_local, int32_t* row);

// Σ mass[row[i]] over a selection of n_sel blocks.
double selected_mass(const double* mass, const int32_t* row, int64_t n_sel);

}  // namespace pyresa::cpu
