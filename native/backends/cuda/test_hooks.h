// Host-side entry points to single CUDA kernels, for tests that check each against the CPU
// backend on random inputs (inputs copied to the GPU, outputs poisoned first, copied back).
// No CUDA types here: the bindings include it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pyresa::cuda_test {

// y [n][rows] = W [rows][cols] (ggml bytes) . x [n][cols]; path 0: integer matvec (Q8 activations),
// 1: dequantize to F16 + tiled tensor-core GEMM, 2: dequantize-and-multiply in shared memory (n <= 64).
// -(10 * steps + rows): integer matvec with that many rows per warp and load steps (one-token K-quants).
// 3: dequantize-and-multiply by dqmm_kernel (PYRESA_CUDA_DQMM=old); 100 * variant + 10 * (prefetch
// + 1) + stages: by the pipelined kernel, that variant (1-3, 0 = 1), ring depth (0: the most that
// fits) and L2 prefetch distance (Q4_K, Q6_K; other formats as path 2); + 1000: early PDL trigger.
std::vector<float> matvec(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, const float* x,
                          int n, const float* bias, int path);
// n (1..64) tokens through the int8 tensor-core products (matmul_mma.cu): y [n][rows] = W . x
// with x quantized to Q8_K by prepare_activations; bias (or null); accumulate: y starts at
// 0.25 * (i % 7) - 0.5 (else poisoned); stages: ring depth (0: the most that fit); cap: most CTAs
// (0: as many as fit at once; fewer make CTAs share tiles through the workspace and the reduce
// kernel); mode: small_mmq_mode() (1: one CTA per SM; 2: two CTAs of 16-row warps per SM).
std::vector<float> small_mmq(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, const float* x,
                             int n, const float* bias, bool accumulate, int stages, int cap, int mode = 1);
// Microseconds per dequant_matmul_small call (path as in matvec: 2, 3, or a pipelined variant)
// on random finite weights of that shape, cycling through copies that together exceed the L2.
// Paths 5-8: matmul_mma on Q8_K activations instead (5: the most stages that fit; 6, 7, 8: 2, 3, 4);
// 9: its mode 2 (two CTAs per SM, the most stages that fit).
double time_dqmm(int type, int64_t rows, int64_t cols, int M, int path, int reps);
// One-token products of 1-3 K-quant weights (types, rows; w: their ggml bytes one after the
// other) on the row x (transform 0 plain, 1 RMS norm with norm_w, eps), with the default 2-rows x
// 2-steps kernel's arithmetic. mode 0: prepare_activations + one matvec per weight (reference);
// 1: matvec_rows_prep with the preparation folded in (cap: its most CTAs, 0 none); 2: prepared
// input, one matvec_rows_prep launch. bias: all rows' (or null); accumulate: y starts at a
// pattern. act_out: the Q8_K activation planes (modes 0 and 2: prepare's; 1: CTA 0's shared copy).
// One token through the tensor-core products (matvec_mma.cu): y = concat_i(W_i . x) for 1-3
// weights (Q4_K / Q6_K, mixed) of one row length, bias over all rows (or null), accumulate: y
// starts at 0.25 * (i % 7) - 0.5; split: K parts per tile (0: the kernel's choice; 1, 2, 4, 8);
// mode: matvec_mma_mode() (1, 2); cap: most CTAs (0: as many as fit; fewer loop over the work).
std::vector<float> matvec_mma(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols,
                              const uint8_t* w, size_t w_bytes, const float* x, const float* bias, bool accumulate,
                              int split, int mode, int cap);
// One token through the bulk-copy products (matvec_bulk.cu): as matvec_mma above; mode:
// matvec_bulk_mode() (1: 3 stages, 2-4 stages); cap: most CTAs (0: one per SM).
std::vector<float> matvec_bulk(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols,
                               const uint8_t* w, size_t w_bytes, const float* x, const float* bias, bool accumulate,
                               int mode, int cap);
// Whether matvec_bulk runs here (an sm_90+ GPU).
bool matvec_bulk_available();
std::vector<float> matvec_prep(const std::vector<int>& types, const std::vector<int64_t>& rows, int64_t cols,
                               const uint8_t* w, size_t w_bytes, const float* x, const float* norm_w, float eps,
                               int transform, const float* bias, bool accumulate, int mode, int cap,
                               std::vector<uint8_t>& act_out);
// One token's gate and up products (w: gate's then up's ggml bytes, rows x cols each) on x, and
// the down product's Q8_K input silu(gate) * up (act_out, planes). mode 0: two matvecs +
// prepare_activations(SwiGLU); 1: matvec_gate_up_glu (its epilogue quantizes), launched
// `repeats` times (the block counters must reset themselves; checked), cap: most CTAs.
// Returns gate then up.
std::vector<float> gate_up_glu(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes, const float* x,
                               int mode, int cap, int repeats, std::vector<uint8_t>& act_out);
// Activation rows in the CPU's ggml block format (Q8_0, Q8_1, Q8_K) or raw F32/F16.
std::vector<uint8_t> quantize_rows(int act_type, const float* x, int n, int64_t cols);
// [rows][cols] floats
std::vector<float> dequantize(int type, int64_t rows, int64_t cols, const uint8_t* w, size_t w_bytes);
// transform: 0 plain, 1 rmsnorm(norm_w, eps), 2 swiglu(x, up)
std::vector<float> transform_rows(int transform, const float* x, const float* up, const float* norm_w, float eps, int n,
                                  int64_t cols);
// x [n][n_head][D] rotated at positions pos0 + i
std::vector<float> rope(const float* x, int n, int n_head, int D, int pos0, float freq_base, bool neox);
// C [M][N] = A [M][K] . B [N][K]^T, F16 bits in
std::vector<float> gemm_f16(const uint16_t* A, const uint16_t* B, int M, int N, int K);
// out [n_tok][n_head][D]; K, V [n_kv_head][cap][D] F16 bits; blocks [n_kv_head][n_sel] or null (dense).
// kernel 0: attention() (the general kernel); 1-4: attention_batched() variant 1-4 (dense; 4: wgmma).
// split_query -1: the engine's choice for the mode (dense: F16 query; sparse: two-term), else 0/1.
std::vector<float> attention(const float* q, int n_tok, int n_head, int n_kv_head, int D, const uint16_t* K,
                             const uint16_t* V, int cap, int pos0, const int32_t* blocks, int n_sel, int block_size,
                             float scale, int n_splits, int kernel, int split_query);
// Timing: q [n_tok][n_head][D] at the end of a synthetic n_ctx-token cache (one layer); ms gets
// the mean time of `iters` calls; returns the output.
std::vector<float> attention_timed(const float* q, int n_tok, int n_head, int n_kv_head, int D, int n_ctx, int kernel,
                                   bool precise, bool split_query, int n_splits, int iters, double& ms);
int attention_batched_splits(int n_tok, int n_head, int n_kv_head, int n_keys, int variant);
// Whether attention_batched variant 4 runs the wgmma kernel here (sm_90a code, compute capability 9.0).
bool attention_wgmma_available();
// Descriptors from K [n_kv_head][cap][D] (refresh over [0, n_tokens)), returned in the CPU's
// layout: kmin, kmax [n_kv_head][n_blocks][D] as floats.
void descriptors(const uint16_t* K, int n_kv_head, int cap, int D, int n_tokens, int block_size, std::vector<float>& kmin,
                 std::vector<float>& kmax);
// Descriptors of [0, n_tokens) built token by token with the decode path's append (rope_store with
// an identity rotation is not used: the append is exercised through the engine tests).
// Selection: returns blocks [n_kv_head][n_sel]; n_sel_out gets n_sel.
std::vector<int32_t> select_blocks(const float* q, int n_head, const uint16_t* K, int n_kv_head, int cap, int D,
                                   int n_tokens, int block_size, double ratio, int min_blocks, int local_blocks,
                                   int& n_sel_out);
// Several selections on one scratch (as the engine's layers and steps): step s has query q[s]
// ([n_head][D]) and context n_tokens[s]; returns each step's blocks [n_kv_head][n_sel].
std::vector<std::vector<int32_t>> select_blocks_steps(const float* q, int n_steps, int n_head, const uint16_t* K,
                                                      int n_kv_head, int cap, int D, const int* n_tokens,
                                                      int block_size, double ratio, int min_blocks, int local_blocks);
// The block selection's kernels (cuda::SelectConfig: the engine's PYRESA_CUDA_TOPN, _TOPN_CTAS,
// _SCORE_TRIGGER, _SCORE_EARLY_Q; stop: bench only, the cluster top-n stops after that phase).
void set_select_kernels(int topn, int ctas, bool score_trigger, int stop, bool score_early_q);
// ctas > 1: the multi-CTA argmax with that many CTAs; else the one-CTA kernel.
int argmax(const float* x, int n, int ctas);
// The k largest of x[0 .. n) after the repetition penalty on `penalized` (see sampling.cuh):
// returns their values, fills ids; with want_sum also max and sum(exp(x - max)).
std::vector<float> top_candidates(const float* x, int n, int k, const int32_t* penalized, int n_penalized, float penalty,
                                  bool want_sum, std::vector<int32_t>& ids, double& max_out, double& sum_out);
// The decode step's kernels (the engine's PYRESA_CUDA_SPARSE_STEP, _DECODE_COMBINE): decode
// attention kernel + parallel combine (true) or the general kernel + serial combine; how the
// decode kernel's splits are merged (decode_combine_mode: 0 the separate combine kernel, 1 inside
// the attention kernel; -1 leaves it as it is); the decode kernel's shape (decode_attention_shape,
// -1 leaves it as it is).
void set_sparse_step_kernels(bool decode_attention, int combine = -1, int shape = -1);
// Times the per-layer kernels of a decode step at depth n_tokens alone (7B shapes by default:
// 28 query / 4 KV heads, D 128, 16-token blocks, ratio 0.1) on the current kernel set: the
// selection (scoring + top-n), the sparse attention (+ combine) on the selected blocks, both back
// to back, and the dense attention at the same depth. Each is run `reps` times over `copies`
// layers' worth of random K/V/descriptors (more than the L2 holds, as in a real step), PDL on
// where the GPU has it. Returns (name, microseconds per layer) and the split counts used; also,
// to tell the stream from the fixed costs: the decode kernel's partials alone (no combine) and
// the sparse attention over the first n_sel blocks of each head (the same bytes, contiguous).
// select_only: the selection's timings alone (select, score, top-n); cap_tokens: the cache's
// capacity when larger than the context (as an engine made for a longer one); sparse_splits > 0
// sets the sparse attention's split count (else the engine's choice).
std::vector<std::pair<std::string, double>> time_sparse_step(int n_tokens, int reps, int copies, int n_head,
                                                             int n_kv_head, int D, bool select_only = false,
                                                             int cap_tokens = 0, int sparse_splits = 0);

}  // namespace pyresa::cuda_test
