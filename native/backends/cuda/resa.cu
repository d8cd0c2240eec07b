#include <cmath>
#include <stdexcept>

#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/resa.cuh"
#include "backends/cuda/select_counts.cuh"

namespace pyresa::cuda {

namespace {

// F16 bits -> a signed key that orders like the value (-0 just below +0), as the CPU's refresh.
__device__ __forceinline__ int order_key(uint16_t h) {
  const int16_t s = (int16_t)h;
  return (int16_t)(s ^ ((s >> 15) & 0x7fff));
}
__device__ __forceinline__ uint16_t from_key(int k) {
  const int16_t s = (int16_t)k;
  return (uint16_t)(int16_t)(s ^ ((s >> 15) & 0x7fff));
}

__global__ void refresh_kernel(__half* desc, DescLayout L, int layer, const __half* K, int64_t head_stride,
                               const int* pos_dev, int pos_offset, int n_tokens) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int first = *pos_dev + pos_offset;
  const int n_valid = first + n_tokens;
  const int blk = first / L.block_size + blockIdx.x;
  if (blk * L.block_size >= n_valid || blk >= L.max_blocks) return;
  const int h = blockIdx.y;
  const __half* kh = K + h * head_stride;
  const int t0 = blk * L.block_size, t1 = min(t0 + L.block_size, n_valid);
  uint16_t* dd = reinterpret_cast<uint16_t*>(desc);
  for (int d = threadIdx.x; d < L.D; d += blockDim.x) {
    int lo = 32767, hi = -32768;
    for (int t = t0; t < t1; ++t) {
      const int k = order_key(__half_as_ushort(kh[(int64_t)t * L.D + d]));
      lo = min(lo, k);
      hi = max(hi, k);
    }
    dd[L.index(layer, h, blk, 0, d)] = from_key(lo);
    dd[L.index(layer, h, blk, 1, d)] = from_key(hi);
  }
}

__device__ __forceinline__ uint32_t score_key(float s) {
  if (isnan(s)) s = -INFINITY;
  const uint32_t b = __float_as_uint(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

constexpr int kScoreThreads = 256;

// Also writes each warp's (min, max) key into `ranges` (select_scratch_bytes), which the cluster
// top-n reads instead of reducing the keys itself. trigger: let the top-n launch now (its CTAs
// then wait in griddepcontrol.wait, resident, for this grid to complete). early_q: build the pooled
// query before reading the position, so that their loads overlap (one dependent round trip less
// before the descriptors' loads).
__global__ void __launch_bounds__(kScoreThreads) score_kernel(const float* q, int n_head, const __half* desc,
                                                             DescLayout L, int layer, ResaParams p,
                                                             const int* pos_dev, uint32_t* keys, uint2* ranges,
                                                             bool trigger, bool early_q) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (trigger) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  __shared__ float qp[256];
  const int h = blockIdx.y, D = L.D, G = n_head / L.n_kv_head;
  auto pool_query = [&] {
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
      float s = 0.0f;
      for (int g = 0; g < G; ++g) s += q[(int64_t)(h * G + g) * D + j];
      qp[j] = s / (float)G;
    }
  };
  if (early_q) pool_query();
  int n_blocks, n_local, n_sel;
  select_counts(*pos_dev + 1, p, n_blocks, n_local, n_sel);
  const int n_scored = n_blocks - n_local, n_pick = n_sel - n_local;
  if (n_pick <= 0 || n_pick >= n_scored) return;  // nothing to rank (uniform over the CTA)
  const int b0 = blockIdx.x * kScoreThreads;
  if (b0 >= n_scored) return;
  if (!early_q) pool_query();
  __syncthreads();
  const int b = b0 + threadIdx.x;
  uint32_t key_lo = 0xffffffffu, key_hi = 0;  // this thread's key, or nothing past the last block
  if (b < n_scored) {
    const uint4* base = reinterpret_cast<const uint4*>(desc + L.index(layer, h, b, 0, 0));  // chunk 0 of block b
    const uint4* maxb = reinterpret_cast<const uint4*>(desc + L.index(layer, h, b, 1, 0));
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    // Unrolled so that each thread has several 16-byte loads in flight (the kernel is a stream
    // over the descriptors: 34 MB per layer at 256K).
#pragma unroll 4
    for (int c = 0; c < D / 8; ++c) {
      const uint4 mn = base[c * 32], mx = maxb[c * 32];  // next chunk: 32 blocks x 8 halves further
      const __half* hn = reinterpret_cast<const __half*>(&mn);
      const __half* hx = reinterpret_cast<const __half*>(&mx);
#pragma unroll
      for (int l = 0; l < 8; ++l) {
        const float x = qp[8 * c + l];
        const float a = __fmul_rn(x, __half2float(hx[l]));
        const float bb = __fmul_rn(x, __half2float(hn[l]));
        acc[l] = __fadd_rn(acc[l], a > bb ? a : bb);
      }
    }
    const float s = __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[4]), __fadd_rn(acc[1], acc[5])),
                              __fadd_rn(__fadd_rn(acc[2], acc[6]), __fadd_rn(acc[3], acc[7])));
    const uint32_t key = score_key(s);
    keys[(int64_t)h * L.max_blocks + b] = key;
    key_lo = key_hi = key;
  }
  // Every lane of a warp reaches here (the warps past the last block too: they write nothing).
  key_lo = __reduce_min_sync(0xffffffffu, key_lo);
  key_hi = __reduce_max_sync(0xffffffffu, key_hi);
  if ((threadIdx.x & 31) == 0 && b < n_scored)
    ranges[(int64_t)h * select_range_stride(L) + b / 32] = make_uint2(key_lo, key_hi);
}

constexpr int kSelThreads = 1024;
constexpr int kSelWarps = kSelThreads / 32;
constexpr int kRadixBits = 11;  // 2048 bins: two per thread in the digit search

// Exclusive block-wide scan of two counters.
__device__ void block_scan2(int& a, int& b, int* sm /* 2*32 */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int ia = a, ib = b;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int ta = __shfl_up_sync(0xffffffffu, ia, o), tb = __shfl_up_sync(0xffffffffu, ib, o);
    if (lane >= o) { ia += ta; ib += tb; }
  }
  if (lane == 31) { sm[warp] = ia; sm[32 + warp] = ib; }
  __syncthreads();
  if (warp == 0) {
    int wa = sm[lane], wb = sm[32 + lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int ta = __shfl_up_sync(0xffffffffu, wa, o), tb = __shfl_up_sync(0xffffffffu, wb, o);
      if (lane >= o) { wa += ta; wb += tb; }
    }
    sm[lane] = wa;
    sm[32 + lane] = wb;
  }
  __syncthreads();
  const int pa = warp ? sm[warp - 1] : 0, pb = warp ? sm[32 + warp - 1] : 0;
  a = pa + ia - a;
  b = pb + ib - b;
  __syncthreads();
}

// Top-n_pick of the scored blocks of one (layer, KV head), one CTA.
// The threshold T (the n_pick-th largest key) is found by a radix select on u = key - min_key,
// starting at the highest bit where the keys differ, 11 bits a pass. Why not on the raw keys:
// scores share sign and most exponent bits, so a histogram of the top bits puts nearly every key
// in one or two bins, and the shared-memory atomics on those bins serialise (that pass alone cost
// ~10 us per layer at 256K). Relative to the minimum, the first pass spreads the keys over up to
// 2048 bins; later passes only count the few keys still tied with the prefix. At most 3 passes.
// The output is then written in index order by warps that each own a contiguous range (ballots
// give ranks within a warp), taking every key > T and the lowest-index keys == T.
__global__ void __launch_bounds__(kSelThreads) select_kernel(DescLayout L, ResaParams p, const int* pos_dev,
                                                            const uint32_t* keys_all, int32_t* blocks,
                                                            int64_t blocks_stride, int* n_sel_out, bool keys_in_smem) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  __shared__ unsigned hist[1 << kRadixBits];
  __shared__ int s_digit, s_above;
  __shared__ int scan_sm[64];
  __shared__ uint32_t red_lo[kSelWarps], red_hi[kSelWarps];
  const int h = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int n_blocks, n_local, n_sel;
  select_counts(*pos_dev + 1, p, n_blocks, n_local, n_sel);
  if (h == 0 && tid == 0) *n_sel_out = n_sel;
  const int n_scored = n_blocks - n_local, n_pick = n_sel - n_local;
  int32_t* out = blocks + h * blocks_stride;
  if (n_pick >= n_scored) {  // every block is taken
    for (int i = tid; i < n_blocks; i += kSelThreads) out[i] = i;
    return;
  }
  for (int i = tid; i < n_local; i += kSelThreads) out[n_pick + i] = n_scored + i;
  if (n_pick <= 0) return;
  // The keys are read several times below: from shared memory when they fit (one L2 pass).
  extern __shared__ __align__(16) uint32_t skeys[];
  const uint32_t* keys = keys_all + (int64_t)h * L.max_blocks;
  // 16-byte loads, four in flight per thread: one CTA reading 64 KB from L2 with one 4-byte load
  // per thread at a time waits ~16 dependent round trips (measured: as long as the scoring).
  // The rows start at h * max_blocks, a multiple of 32 keys, so they are 16-byte aligned.
  uint32_t lo = 0xffffffffu, hi = 0;
  const int n_vec = n_scored / 4;
  const uint4* keys4 = reinterpret_cast<const uint4*>(keys);
#pragma unroll 4
  for (int i = tid; i < n_vec; i += kSelThreads) {
    const uint4 v = keys4[i];
    if (keys_in_smem) reinterpret_cast<uint4*>(skeys)[i] = v;
    lo = min(min(lo, min(v.x, v.y)), min(v.z, v.w));
    hi = max(max(hi, max(v.x, v.y)), max(v.z, v.w));
  }
  for (int i = 4 * n_vec + tid; i < n_scored; i += kSelThreads) {
    const uint32_t key = keys[i];
    if (keys_in_smem) skeys[i] = key;
    lo = min(lo, key);
    hi = max(hi, key);
  }
  lo = __reduce_min_sync(0xffffffffu, lo);
  hi = __reduce_max_sync(0xffffffffu, hi);
  if (lane == 0) { red_lo[warp] = lo; red_hi[warp] = hi; }
  __syncthreads();
  lo = __reduce_min_sync(0xffffffffu, red_lo[lane]);  // kSelWarps == 32
  hi = __reduce_max_sync(0xffffffffu, red_hi[lane]);
  if (keys_in_smem) keys = skeys;

  // Radix select on u = key - lo (0 .. hi - lo): T = lo + the prefix left after the passes.
  uint32_t prefix = 0, mask = 0;
  int k = n_pick;  // keys still to take among those matching the prefix
  for (int top = 32 - __clz(hi - lo); top > 0; top -= kRadixBits) {
    const int shift = max(top - kRadixBits, 0), nb = 1 << (top - shift);
    for (int i = tid; i < nb; i += kSelThreads) hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < n_scored; i += kSelThreads) {
      const uint32_t u = keys[i] - lo;
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & (nb - 1)], 1u);
    }
    __syncthreads();
    // Digits in descending order, two per thread: the digit where the running count reaches k.
    const int d0 = nb - 1 - 2 * tid, d1 = d0 - 1;
    const int c0 = d0 >= 0 ? (int)hist[d0] : 0, c1 = d1 >= 0 ? (int)hist[d1] : 0;
    int above = c0 + c1, unused = 0;
    block_scan2(above, unused, scan_sm);  // count of the digits above d0
    if (above < k && above + c0 >= k) {
      s_digit = d0;
      s_above = above;
    } else if (above + c0 < k && above + c0 + c1 >= k) {
      s_digit = d1;
      s_above = above + c0;
    }
    __syncthreads();
    prefix |= (uint32_t)s_digit << shift;
    mask |= (uint32_t)(nb - 1) << shift;
    k -= s_above;
  }
  const uint32_t T = lo + prefix;
  const int need_eq = k;  // keys equal to T to take, lowest indices first

  // Compaction in index order: warp w owns [w0, w1), lanes read consecutive keys.
  const int chunk = ((n_scored + kSelWarps - 1) / kSelWarps + 31) & ~31;
  const int w0 = min(n_scored, warp * chunk), w1 = min(n_scored, w0 + chunk);
  int gt = 0, eq = 0;
  for (int b = w0; b < w1; b += 32) {
    const int i = b + lane;
    const uint32_t key = i < w1 ? keys[i] : 0u;
    gt += __popc(__ballot_sync(0xffffffffu, i < w1 && key > T));
    eq += __popc(__ballot_sync(0xffffffffu, i < w1 && key == T));
  }
  int gt_before = lane == 0 ? gt : 0, eq_before = lane == 0 ? eq : 0;
  block_scan2(gt_before, eq_before, scan_sm);  // lane 0: the counts of the warps before
  gt_before = __shfl_sync(0xffffffffu, gt_before, 0);
  eq_before = __shfl_sync(0xffffffffu, eq_before, 0);
  int pos = gt_before + min(eq_before, need_eq), eq_seen = eq_before;
  const uint32_t below = (1u << lane) - 1u;
  for (int b = w0; b < w1; b += 32) {
    const int i = b + lane;
    const uint32_t key = i < w1 ? keys[i] : 0u;
    const bool is_eq = i < w1 && key == T;
    const uint32_t eq_mask = __ballot_sync(0xffffffffu, is_eq);
    const bool take = (i < w1 && key > T) || (is_eq && eq_seen + __popc(eq_mask & below) < need_eq);
    const uint32_t take_mask = __ballot_sync(0xffffffffu, take);
    if (take) out[pos + __popc(take_mask & below)] = i;
    pos += __popc(take_mask);
    eq_seen += __popc(eq_mask);
  }
}

}  // namespace

SelectConfig& select_config() {
  static SelectConfig c;
  return c;
}

void refresh_descriptors(__half* desc, const DescLayout& L, int layer, const __half* K, int64_t head_stride,
                         const int* pos_dev, int pos_offset, int n_tokens, cudaStream_t stream) {
  if (n_tokens <= 0) return;
  const int n_blk = n_tokens / L.block_size + 2;  // blocks a range of n_tokens can touch
  launch(refresh_kernel, dim3(n_blk, L.n_kv_head), L.D, 0, stream, desc, L, layer, K, head_stride, pos_dev, pos_offset,
                                                                n_tokens);
  PYRESA_CUDA_LAUNCH_CHECK();
}

void select_blocks(const float* q, int n_head, const __half* desc, const DescLayout& L, int layer, const ResaParams& p,
                   const int* pos_dev, uint32_t* keys, int32_t* blocks, int64_t blocks_stride, int* n_sel_out,
                   cudaStream_t stream) {
  score_blocks(q, n_head, desc, L, layer, p, pos_dev, keys, stream);
  select_top_blocks(L, p, pos_dev, keys, blocks, blocks_stride, n_sel_out, stream);
}

void score_blocks(const float* q, int n_head, const __half* desc, const DescLayout& L, int layer, const ResaParams& p,
                  const int* pos_dev, uint32_t* keys, cudaStream_t stream) {
  if (p.block_size != L.block_size) throw std::invalid_argument("select_blocks: block size differs from the descriptors'");
  if (L.D > 256 || L.D % 8) throw UnsupportedError("CUDA block selection: head_dim must be a multiple of 8, <= 256");
  uint2* ranges = reinterpret_cast<uint2*>(keys + (size_t)L.n_kv_head * L.max_blocks);
  launch(score_kernel, dim3(ceil_div(L.max_blocks, kScoreThreads), L.n_kv_head), kScoreThreads, 0, stream, q, n_head,
         desc, L, layer, p, pos_dev, keys, ranges, select_config().score_trigger, select_config().score_early_q);
  PYRESA_CUDA_LAUNCH_CHECK();
}

void select_top_blocks(const DescLayout& L, const ResaParams& p, const int* pos_dev, const uint32_t* keys,
                       int32_t* blocks, int64_t blocks_stride, int* n_sel_out, cudaStream_t stream) {
  if (select_config().topn == 1 &&
      select_top_blocks_cluster(L, p, pos_dev, keys, blocks, blocks_stride, n_sel_out, stream))
    return;
  const size_t smem = (size_t)L.max_blocks * sizeof(uint32_t);
  const bool in_smem = smem <= 200 * 1024;
  static int configured_smem[64] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  if (in_smem && configured_smem[dev & 63] < (int)smem) {
    PYRESA_CUDA_CHECK(cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured_smem[dev & 63] = (int)smem;
  }
  launch(select_kernel, L.n_kv_head, kSelThreads, in_smem ? smem : 0, stream, L, p, pos_dev, keys, blocks, blocks_stride,
                                                                          n_sel_out, in_smem);
  PYRESA_CUDA_LAUNCH_CHECK();
}

}  // namespace pyresa::cuda
