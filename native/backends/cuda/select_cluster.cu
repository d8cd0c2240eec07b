// The top-n of a decode step's block selection over a thread-block cluster per KV head (sm_90).
//
// select_kernel (resa.cu) runs the whole top-n of a KV head in one 1024-thread CTA: one SM walks
// its 16K keys five times and passes ~20 block-wide barriers (11.7 us per layer at 256K, run 10).
// Here C CTAs of 256 threads (C = 8 at 16K blocks: ~2,048 keys per CTA, 8 per thread, two 16-byte
// loads) share the work and exchange only histograms, through distributed shared memory:
//   1. keys in registers (each thread a contiguous run); the key range (min, max) from the
//      per-warp ranges the scoring wrote beside the keys (loaded with them, one round trip);
//   2. radix select on u = key - min, 11-bit digits from the top bit where the keys differ (as
//      select_kernel): each CTA bins its keys that still match the prefix into a local histogram
//      (2048 fine + 64 coarse bins), one cluster barrier, then warp 0 of *every* CTA merges the
//      cluster's histograms itself (round 1: the 64 coarse bins of all C CTAs; round 2: the 32 fine
//      bins of the chosen coarse bin) and finds the digit, so no second barrier is needed to share
//      it. The same loads give, per pass, how many keys of the lower-ranked CTAs lie above the
//      digit, and at the last pass how many equal T: the output positions of this CTA's keys;
//   3. compaction: one block scan of per-thread (> T, == T) counts, each thread writes the blocks
//      it takes: every key > T and the lowest-index keys == T, in ascending order (the CPU's rule).
// Histogram buffers alternate between passes: a CTA's buffer of pass p is read remotely during the
// merge of pass p, which every CTA finishes before it arrives at the barrier of pass p + 1, so
// after that barrier it can be cleared for pass p + 2. The last barrier is split (arrive after the
// last merge, wait before exiting): a CTA's shared memory must outlive its readers.
#include <cooperative_groups.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/resa.cuh"
#include "backends/cuda/select_counts.cuh"

namespace pyresa::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kMaxVecs = 4;  // 16-byte key vectors per thread: at most 4,096 keys per CTA
constexpr int kBits = 11, kBins = 1 << kBits, kCoarse = kBins / 32;
// The automatic cluster size: the fewest CTAs with at most this many keys each (run 11, H100:
// 2,048 keys per CTA beat 1,024, i.e. 8 CTAs beat 16 at 16K keys per KV head and 4 beat 8 at 8K).
constexpr int kKeysPerCta = 2304;

struct __align__(16) TopnShared {
  unsigned fine[2][kBins];
  unsigned coarse[2][kCoarse];
  uint32_t warp_lo[kWarps], warp_hi[kWarps];
  int warp_gt[kWarps], warp_eq[kWarps];
  int digit, k, gt_lower, eq_lower;  // one pass's merge, from warp 0 to the CTA
};

// The device helpers exist for sm_90 only (the kernel is empty below it: no unused functions).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }

__device__ __forceinline__ int warp_inclusive_sum(int v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

// One pass's merge, by warp 0 of a CTA of rank `rank`: the digit holding the k-th largest of the
// keys binned in buffer `buf` of every CTA, k less the keys above that digit, the lower-ranked
// CTAs' keys above the digit and (meaningful at the last pass) in it.
template <int C>
__device__ void merge_pass(TopnShared& s, int buf, int rank, int k, int& digit, int& k_left, int& gt_lower,
                           int& eq_lower) {
  const int lane = threadIdx.x;
  cg::cluster_group cluster = cg::this_cluster();
  // Round 1: coarse bins in descending order, lane l holds 63 - 2l (.y) and 62 - 2l (.x).
  uint2 cv[C];
#pragma unroll
  for (int q = 0; q < C; ++q)
    cv[q] = reinterpret_cast<const uint2*>(cluster.map_shared_rank(&s.coarse[buf][0], q))[31 - lane];
  int hi = 0, lo = 0, hi_lower = 0, lo_lower = 0;
#pragma unroll
  for (int q = 0; q < C; ++q) {
    hi += cv[q].y;
    lo += cv[q].x;
    if (q < rank) {
      hi_lower += cv[q].y;
      lo_lower += cv[q].x;
    }
  }
  int incl = warp_inclusive_sum(hi + lo), excl = incl - hi - lo;
  const unsigned hit = __ballot_sync(0xffffffffu, excl < k && k <= incl);
  const int hl = __ffs(hit) - 1;
  const bool in_hi = k <= __shfl_sync(0xffffffffu, excl + hi, hl);
  const int c_star = in_hi ? 63 - 2 * hl : 62 - 2 * hl;
  const int above = __shfl_sync(0xffffffffu, in_hi ? excl : excl + hi, hl);
  // Lower CTAs' keys in coarse bins above c_star.
  int lower = (63 - 2 * lane > c_star ? hi_lower : 0) + (62 - 2 * lane > c_star ? lo_lower : 0);
  // Round 2: the 32 fine bins of c_star, descending: lane l holds bin 32 c_star + 31 - l.
  unsigned fv[C];
#pragma unroll
  for (int q = 0; q < C; ++q) fv[q] = cluster.map_shared_rank(&s.fine[buf][0], q)[32 * c_star + 31 - lane];
  int f = 0, f_lower = 0;
#pragma unroll
  for (int q = 0; q < C; ++q) {
    f += fv[q];
    if (q < rank) f_lower += fv[q];
  }
  const int k2 = k - above;
  incl = warp_inclusive_sum(f);
  excl = incl - f;
  const unsigned hit2 = __ballot_sync(0xffffffffu, excl < k2 && k2 <= incl);
  const int fl = __ffs(hit2) - 1;
  digit = 32 * c_star + 31 - fl;
  k_left = k2 - __shfl_sync(0xffffffffu, excl, fl);
  lower += lane < fl ? f_lower : 0;
  gt_lower = __reduce_add_sync(0xffffffffu, lower);
  eq_lower = __shfl_sync(0xffffffffu, f_lower, fl);
}

#endif

// Grid (C, n_kv_head), cluster (C, 1, 1). pos_early: read the position before griddepcontrol.wait
// (safe when the kernel before, the scoring, does not trigger early: everything it waited for,
// which includes whatever wrote the position, has completed before this grid can launch).
template <int C>
__global__ void __launch_bounds__(kThreads) select_cluster_kernel(DescLayout L, ResaParams p, const int* pos_dev,
                                                                 const uint32_t* keys_all, const uint2* ranges_all,
                                                                 int32_t* blocks, int64_t blocks_stride,
                                                                 int* n_sel_out, bool pos_early, int stop) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ TopnShared s;
  const int h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rank = (int)cg::this_cluster().block_rank();
  for (int i = tid; i < kBins; i += kThreads) s.fine[0][i] = 0;
  if (tid < kCoarse) s.coarse[0][tid] = 0;
  int pos = pos_early ? *pos_dev : 0;
  pdl_wait();  // the keys come from the scoring launched just before (PDL)
  if (stop == 1) return;
  if (!pos_early) pos = *pos_dev;
  int n_blocks, n_local, n_sel;
  select_counts(pos + 1, p, n_blocks, n_local, n_sel);
  if (h == 0 && rank == 0 && tid == 0 && stop == 0) *n_sel_out = n_sel;
  const int n_scored = n_blocks - n_local, n_pick = n_sel - n_local;
  int32_t* out = blocks + h * blocks_stride;
  if (n_pick >= n_scored) {  // every block is taken (uniform over the cluster: no barrier is pending)
    if (stop == 0)
      for (int i = rank * kThreads + tid; i < n_blocks; i += C * kThreads) out[i] = i;
    return;
  }
  if (rank == 0 && stop == 0)
    for (int i = tid; i < n_local; i += kThreads) out[n_pick + i] = n_scored + i;
  if (n_pick <= 0) return;

  // This CTA's keys: vectors [cv0, cv1) of the row, split evenly into contiguous runs per thread.
  const int n_vec = (n_scored + 3) / 4, per_cta = (n_vec + C - 1) / C;
  const int cv0 = min(n_vec, rank * per_cta), cv1 = min(n_vec, cv0 + per_cta), cn = cv1 - cv0;
  const int v0 = cv0 + tid * cn / kThreads, v1 = cv0 + (tid + 1) * cn / kThreads;
  const int first = 4 * v0, nk = min(4 * v1, n_scored) - first;  // this thread's keys: [first, first + nk)
  const uint4* keys4 = reinterpret_cast<const uint4*>(keys_all + (int64_t)h * L.max_blocks);
  uint32_t key[4 * kMaxVecs];
#pragma unroll
  for (int j = 0; j < kMaxVecs; ++j) {
    const uint4 v = v0 + j < v1 ? keys4[v0 + j] : make_uint4(0, 0, 0, 0);
    key[4 * j] = v.x;
    key[4 * j + 1] = v.y;
    key[4 * j + 2] = v.z;
    key[4 * j + 3] = v.w;
  }
  // The key range from the scoring warps' (min, max), two warps per 16-byte load.
  const int n_ranges = (n_scored + 31) / 32;
  const uint4* ranges4 = reinterpret_cast<const uint4*>(ranges_all + (int64_t)h * select_range_stride(L));
  uint32_t lo = 0xffffffffu, hi = 0;
  for (int i = tid; 2 * i < n_ranges; i += kThreads) {
    const uint4 r = ranges4[i];
    lo = min(lo, r.x);
    hi = max(hi, r.y);
    if (2 * i + 1 < n_ranges) {
      lo = min(lo, r.z);
      hi = max(hi, r.w);
    }
  }
  lo = __reduce_min_sync(0xffffffffu, lo);
  hi = __reduce_max_sync(0xffffffffu, hi);
  if (lane == 0) {
    s.warp_lo[warp] = lo;
    s.warp_hi[warp] = hi;
  }
  __syncthreads();  // also: histogram buffer 0 is clear
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    lo = min(lo, s.warp_lo[w]);
    hi = max(hi, s.warp_hi[w]);
  }
  if (stop == 2) return;

  // Radix select; T = lo + prefix. gt_lower: keys > T in lower-ranked CTAs; eq_lower: == T.
  uint32_t prefix = 0, mask = 0;
  int k = n_pick, gt_lower = 0, eq_lower = min(4 * cv0, n_scored);  // no pass: every key equals lo
  int buf = 0;
  for (int top = 32 - __clz(hi - lo); top > 0;) {
    const int shift = max(top - kBits, 0);
    const uint32_t digit_mask = (1u << (top - shift)) - 1u;
#pragma unroll
    for (int i = 0; i < 4 * kMaxVecs; ++i) {
      const uint32_t u = key[i] - lo;
      if (i < nk && (u & mask) == prefix) {
        const uint32_t d = (u >> shift) & digit_mask;
        atomicAdd(&s.fine[buf][d], 1u);
        atomicAdd(&s.coarse[buf][d >> 5], 1u);
      }
    }
    cluster_arrive();  // release: this CTA's histogram, to the cluster
    cluster_wait();
    if (warp == 0) {
      int digit, k_left, gtl, eql;
      merge_pass<C>(s, buf, rank, k, digit, k_left, gtl, eql);
      if (lane == 0) {
        s.digit = digit;
        s.k = k_left;
        s.gt_lower = gtl;
        s.eq_lower = eql;
      }
    } else {  // the other buffer's remote readers (the previous pass's merges) are past this barrier
      for (int i = tid - 32; i < kBins; i += kThreads - 32) s.fine[buf ^ 1][i] = 0;
      if (tid - 32 < kCoarse) s.coarse[buf ^ 1][tid - 32] = 0;
    }
    __syncthreads();
    prefix |= (uint32_t)s.digit << shift;
    mask |= digit_mask << shift;
    k = s.k;
    gt_lower += s.gt_lower;
    eq_lower = s.eq_lower;
    top = shift;
    buf ^= 1;
    if (stop == 3) break;
  }
  cluster_arrive();  // this CTA reads no other CTA's shared memory from here on
  if (stop != 0) {
    cluster_wait();
    return;
  }
  const uint32_t T = lo + prefix;
  const int need_eq = k;  // keys equal to T to take, lowest blocks first

  // Compaction: positions from the lower CTAs' counts, then this CTA's block scan.
  int gt = 0, eq = 0;
#pragma unroll
  for (int i = 0; i < 4 * kMaxVecs; ++i) {
    gt += i < nk && key[i] > T;
    eq += i < nk && key[i] == T;
  }
  const int gt_incl = warp_inclusive_sum(gt), eq_incl = warp_inclusive_sum(eq);
  if (lane == 31) {
    s.warp_gt[warp] = gt_incl;
    s.warp_eq[warp] = eq_incl;
  }
  __syncthreads();
  int gt_seen = gt_lower + gt_incl - gt, eq_seen = eq_lower + eq_incl - eq;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) {
      gt_seen += s.warp_gt[w];
      eq_seen += s.warp_eq[w];
    }
  }
#pragma unroll
  for (int i = 0; i < 4 * kMaxVecs; ++i) {
    if (i < nk) {
      if (key[i] > T) out[gt_seen++ + min(eq_seen, need_eq)] = first + i;
      else if (key[i] == T) {
        if (eq_seen < need_eq) out[gt_seen + eq_seen] = first + i;
        ++eq_seen;
      }
    }
  }
  cluster_wait();
#endif
}

template <int C>
void launch_cluster(const DescLayout& L, const ResaParams& p, const int* pos_dev, const uint32_t* scratch,
                    int32_t* blocks, int64_t blocks_stride, int* n_sel_out, cudaStream_t stream) {
  const SelectConfig& cfg = select_config();
  cudaLaunchConfig_t lc{};
  lc.gridDim = dim3(C, L.n_kv_head);
  lc.blockDim = dim3(kThreads);
  lc.dynamicSmemBytes = 0;
  lc.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  lc.attrs = attr;
  lc.numAttrs = pdl_enabled() ? 2 : 1;
  const uint2* ranges = reinterpret_cast<const uint2*>(scratch + (size_t)L.n_kv_head * L.max_blocks);
  PYRESA_CUDA_CHECK(cudaLaunchKernelEx(&lc, select_cluster_kernel<C>, L, p, pos_dev, scratch, ranges, blocks,
                                       blocks_stride, n_sel_out, !cfg.score_trigger, cfg.topn_stop));
  PYRESA_CUDA_LAUNCH_CHECK();
}

// Whether clusters of 16 CTAs of this kernel can be placed (non-portable size, allowed here), once
// per device.
bool sixteen_fit(int dev) {
  static int fits[64] = {};  // 0 unknown, 1 yes, 2 no
  int& f = fits[dev & 63];
  if (!f) {
    cudaError_t e = cudaFuncSetAttribute(select_cluster_kernel<16>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    int n = 0;
    if (e == cudaSuccess) {
      cudaLaunchConfig_t lc{};
      lc.gridDim = dim3(16, 1);
      lc.blockDim = dim3(kThreads);
      cudaLaunchAttribute a;
      a.id = cudaLaunchAttributeClusterDimension;
      a.val.clusterDim.x = 16;
      a.val.clusterDim.y = 1;
      a.val.clusterDim.z = 1;
      lc.attrs = &a;
      lc.numAttrs = 1;
      e = cudaOccupancyMaxActiveClusters(&n, select_cluster_kernel<16>, &lc);
    }
    if (e != cudaSuccess) cudaGetLastError();  // clear it: the answer is "no"
    f = e == cudaSuccess && n > 0 ? 1 : 2;
  }
  return f == 1;
}

}  // namespace

int select_cluster_size(const DescLayout& L) {
  int dev = 0;
  PYRESA_CUDA_CHECK(cudaGetDevice(&dev));
  static int major[64] = {};
  if (!major[dev & 63]) PYRESA_CUDA_CHECK(cudaDeviceGetAttribute(&major[dev & 63], cudaDevAttrComputeCapabilityMajor, dev));
  if (major[dev & 63] < 9) return 0;
  // Cluster size: forced, or the fewest CTAs that hold <= kKeysPerCta keys each; then raised until
  // a CTA holds at most kMaxVecs vectors per thread (n_scored <= max_blocks).
  const int max_c = sixteen_fit(dev) ? 16 : 8;
  const int forced = select_config().topn_ctas;
  int C = 1;
  if (forced > 0) {
    while (C * 2 <= std::min(forced, max_c)) C *= 2;
  } else {
    while (C < max_c && C * kKeysPerCta < L.max_blocks) C *= 2;
  }
  auto fits = [&](int c) { return ceil_div(ceil_div(L.max_blocks, 4), c) <= kThreads * kMaxVecs; };
  while (C < max_c && !fits(C)) C *= 2;
  return fits(C) ? C : 0;
}

bool select_top_blocks_cluster(const DescLayout& L, const ResaParams& p, const int* pos_dev, const uint32_t* scratch,
                               int32_t* blocks, int64_t blocks_stride, int* n_sel_out, cudaStream_t stream) {
  const int C = select_cluster_size(L);
  if (!C) return false;
  switch (C) {
    case 1: launch_cluster<1>(L, p, pos_dev, scratch, blocks, blocks_stride, n_sel_out, stream); break;
    case 2: launch_cluster<2>(L, p, pos_dev, scratch, blocks, blocks_stride, n_sel_out, stream); break;
    case 4: launch_cluster<4>(L, p, pos_dev, scratch, blocks, blocks_stride, n_sel_out, stream); break;
    case 8: launch_cluster<8>(L, p, pos_dev, scratch, blocks, blocks_stride, n_sel_out, stream); break;
    default: launch_cluster<16>(L, p, pos_dev, scratch, blocks, blocks_stride, n_sel_out, stream);
  }
  return true;
}

}  // namespace pyresa::cuda
