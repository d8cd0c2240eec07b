// Sampling support on the GPU: the repetition penalty and the k largest logits of one position,
// so that a sampled decode step copies out k (id, logit) pairs instead of the whole vocabulary
// (600 KB per token at 152K). The host finishes the draw on those candidates (top-p, min-p,
// temperature, the seeded random number) with the same code that serves the CPU engine, so both
// engines draw the same token from the same logits.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyresa::cuda {

// Most candidates one call returns (one per thread of the selecting CTA).
constexpr int kMaxCandidates = 1024;

struct TopCandidatesArgs {
  const float* logits = nullptr;  // [n] (device)
  int n = 0;
  int k = 0;  // 1 .. kMaxCandidates; k >= n returns every index
  // Repetition penalty (llama.cpp's): logit / penalty if > 0, else logit * penalty, for each
  // (distinct) id in penalized[0 .. n_penalized). Applied to a copy in `work` [n]; logits stay as they are.
  const int32_t* penalized = nullptr;
  int n_penalized = 0;
  float penalty = 1.0f;
  float* work = nullptr;
  bool want_sum = false;  // also sum(exp(x - max)) over all n, in double (top-k off: top-p needs it)
  // Out (device): the min(k, n) largest values after the penalty, ties at the k-th value resolved
  // to the lowest ids, in no particular order; stats[0] = max, stats[1] = the sum (or 0).
  int32_t* out_ids = nullptr;
  float* out_logits = nullptr;
  double* stats = nullptr;
};
void top_candidates(const TopCandidatesArgs& a, cudaStream_t stream);

}  // namespace pyresa::cuda
