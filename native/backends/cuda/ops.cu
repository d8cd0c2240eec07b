#include <algorithm>

#include "backends/cuda/common.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/ops.cuh"

namespace pyresa::cuda {

namespace {

__device__ __forceinline__ int order_key16(uint16_t h) {
  const int16_t s = (int16_t)h;
  return (int16_t)(s ^ ((s >> 15) & 0x7fff));
}

__global__ void rope_store_kernel(RopeStoreArgs a) {
  pdl_trigger();
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int tok = blockIdx.x, head = blockIdx.y, i = threadIdx.x, D = a.D, half = D / 2;
  if (i >= half) return;
  const int pos = *a.pos_dev + a.pos_offset + tok;
  // theta_i = pos * theta_scale^i by repeated multiplication, as the CPU computes it.
  float theta = (float)pos;
  for (int k = 0; k < i; ++k) theta *= a.theta_scale;
  const float c = cosf(theta), s = sinf(theta);
  const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
  if (head < a.n_head) {
    float* x = a.q + (int64_t)tok * a.n_head * D + (int64_t)head * D;
    const float x0 = x[ia], x1 = x[ib];
    x[ia] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));  // two roundings each, as the CPU
    x[ib] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    return;
  }
  const int h = head - a.n_head;
  const float* kx = a.k + (int64_t)tok * a.n_kv_head * D + (int64_t)h * D;
  const float k0 = kx[ia], k1 = kx[ib];
  const __half ka = __float2half_rn(__fsub_rn(__fmul_rn(k0, c), __fmul_rn(k1, s)));
  const __half kb = __float2half_rn(__fadd_rn(__fmul_rn(k0, s), __fmul_rn(k1, c)));
  __half* kc = a.K + h * a.head_stride + (int64_t)pos * D;
  kc[ia] = ka;
  kc[ib] = kb;
  const float* vx = a.v + (int64_t)tok * a.n_kv_head * D + (int64_t)h * D;
  __half* vc = a.V + h * a.head_stride + (int64_t)pos * D;
  vc[2 * i] = __float2half_rn(vx[2 * i]);
  vc[2 * i + 1] = __float2half_rn(vx[2 * i + 1]);
  if (a.desc) {
    const DescLayout& L = a.desc_layout;
    const int blk = pos / L.block_size;
    const bool fresh = pos % L.block_size == 0;
    uint16_t* dd = reinterpret_cast<uint16_t*>(a.desc);
    const int dims[2] = {ia, ib};
    const __half vals[2] = {ka, kb};
    for (int e = 0; e < 2; ++e) {
      const uint16_t kv = __half_as_ushort(vals[e]);
      uint16_t* mn = dd + L.index(a.layer, h, blk, 0, dims[e]);
      uint16_t* mx = dd + L.index(a.layer, h, blk, 1, dims[e]);
      if (fresh) {
        *mn = kv;
        *mx = kv;
      } else {
        if (order_key16(kv) < order_key16(*mn)) *mn = kv;
        if (order_key16(kv) > order_key16(*mx)) *mx = kv;
      }
    }
  }
}

__global__ void argmax_kernel(const float* x, int n, int32_t* out, int32_t* history, const int* pos_dev) {
  pdl_trigger();
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  __shared__ float sv[32];
  __shared__ int si[32];
  float best = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    if (v > best) { best = v; bi = i; }  // strided scan: first hit per thread is its lowest index
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sv[warp] = best; si[warp] = bi; }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    best = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
    }
    if (lane == 0) {
      if (bi == 0x7fffffff) bi = 0;  // all NaN
      out[0] = bi;
      if (history) history[*pos_dev + 1] = bi;
    }
  }
}

// (value, index) pairs: the larger value wins, the lower index on ties; NaN never wins.
__device__ __forceinline__ void argmax_merge(float& best, int& bi, float ov, int oi) {
  if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
}
__device__ __forceinline__ void argmax_block(float& best, int& bi, float* sv, int* si) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    argmax_merge(best, bi, ov, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // sv/si may be in use by an earlier call
  if (lane == 0) { sv[warp] = best; si[warp] = bi; }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    best = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      argmax_merge(best, bi, ov, oi);
    }
  }
}

// The same argmax over many CTAs (one CTA scanned 152K logits in ~50 us, 1.6% of a decode step):
// each CTA reduces a contiguous chunk to one (value, index) pair; the last CTA to finish (a
// counter that atomicInc wraps back to 0 for the next launch) merges the pairs and writes out.
__global__ void __launch_bounds__(256) argmax_multi_kernel(const float* x, int n, int32_t* out, int32_t* history,
                                                           const int* pos_dev, ArgmaxScratch sc) {
  pdl_trigger();
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ bool last;
  const int chunk = (n + gridDim.x - 1) / gridDim.x;
  const int i0 = blockIdx.x * chunk, i1 = min(n, i0 + chunk);
  float best = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const float v = x[i];
    if (v > best) { best = v; bi = i; }  // strided scan: first hit per thread is its lowest index
  }
  argmax_block(best, bi, sv, si);
  if (threadIdx.x == 0) {
    sc.val[blockIdx.x] = best;
    sc.idx[blockIdx.x] = bi;
    __threadfence();
    last = atomicInc(sc.counter, gridDim.x - 1) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  best = -INFINITY;
  bi = 0x7fffffff;
  for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x)
    argmax_merge(best, bi, __ldcg(sc.val + b), __ldcg(sc.idx + b));
  argmax_block(best, bi, sv, si);
  if (threadIdx.x == 0) {
    if (bi == 0x7fffffff) bi = 0;  // all NaN
    out[0] = bi;
    if (history) history[*pos_dev + 1] = bi;
  }
}

__global__ void advance_kernel(int* pos, int n) {
  pdl_trigger();
  pdl_wait();
  *pos += n;
}
__global__ void set_int_kernel(int* dst, int v) {
  pdl_trigger();
  pdl_wait();
  *dst = v;
}
__global__ void gather_kernel(const int32_t* h, const int* pos, int offset, int n, int32_t* out) {
  pdl_trigger();
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int i = threadIdx.x;
  if (i < n) out[i] = h[*pos + offset + i];
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void fill_kernel(__half* K, __half* V, int n_layer, int n_kv_head, int64_t head_stride, int D,
                            int n_tokens, uint64_t seed) {
  pdl_wait();  // inputs may come from the kernel launched just before (PDL)
  const int64_t per_head = (int64_t)n_tokens * D;
  const int64_t total = (int64_t)n_layer * n_kv_head * per_head;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total / 2; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = 2 * i;
    const int64_t head = e / per_head, off = e % per_head;
    const uint64_t r = mix64(seed ^ (uint64_t)e);
    auto uni = [](uint32_t b) { return (float)(b >> 8) * (2.0f / 16777216.0f) - 1.0f; };
    const int64_t at = head * head_stride + off;
    K[at] = __float2half_rn(uni((uint32_t)r));
    K[at + 1] = __float2half_rn(uni((uint32_t)(r >> 32)));
    const uint64_t r2 = mix64(r);
    V[at] = __float2half_rn(uni((uint32_t)r2));
    V[at + 1] = __float2half_rn(uni((uint32_t)(r2 >> 32)));
  }
}

}  // namespace

void set_pdl_early_ops(bool on) { set_pdl_early_this_unit(on); }

void rope_store(const RopeStoreArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  launch(rope_store_kernel, dim3(a.n, a.n_head + a.n_kv_head), a.D / 2, 0, stream, a);
  PYRESA_CUDA_LAUNCH_CHECK();
}

void argmax(const float* logits, int n, int32_t* out, int32_t* history, const int* pos_dev, cudaStream_t stream,
            const ArgmaxScratch* scratch) {
  if (scratch && scratch->n_ctas > 1) {
    const int ctas = std::max(1, std::min(scratch->n_ctas, (n + 1023) / 1024));
    launch(argmax_multi_kernel, ctas, 256, 0, stream, logits, n, out, history, pos_dev, *scratch);
  } else {
    launch(argmax_kernel, 1, 1024, 0, stream, logits, n, out, history, pos_dev);
  }
  PYRESA_CUDA_LAUNCH_CHECK();
}

size_t argmax_scratch_bytes(int n_ctas) { return 16 + (size_t)n_ctas * 8; }

ArgmaxScratch argmax_scratch(void* mem, int n_ctas) {
  ArgmaxScratch s;
  s.counter = static_cast<unsigned*>(mem);
  s.val = reinterpret_cast<float*>(static_cast<char*>(mem) + 16);
  s.idx = reinterpret_cast<int*>(s.val + n_ctas);
  s.n_ctas = n_ctas;
  PYRESA_CUDA_CHECK(cudaMemset(mem, 0, 16));  // the counter starts at 0; each launch leaves it at 0
  return s;
}

void advance_position(int* pos_dev, int n, cudaStream_t stream) {
  launch(advance_kernel, 1, 1, 0, stream, pos_dev, n);
  PYRESA_CUDA_LAUNCH_CHECK();
}

void set_device_int(int* dst, int value, cudaStream_t stream) {
  launch(set_int_kernel, 1, 1, 0, stream, dst, value);
  PYRESA_CUDA_LAUNCH_CHECK();
}

void gather_tokens(const int32_t* history, const int* pos_dev, int offset, int n, int32_t* out, cudaStream_t stream) {
  for (int s = 0; s < n; s += 1024) {
    launch(gather_kernel, 1, 1024, 0, stream, history + s, pos_dev, offset, std::min(1024, n - s), out + s);
    PYRESA_CUDA_LAUNCH_CHECK();
  }
}

void fill_kv_random(__half* K, __half* V, int n_layer, int n_kv_head, int64_t head_stride, int D, int n_tokens,
                    uint64_t seed, cudaStream_t stream) {
  if (n_tokens <= 0) return;
  launch(fill_kernel, 132 * 16, 256, 0, stream, K, V, n_layer, n_kv_head, head_stride, D, n_tokens, seed);
  PYRESA_CUDA_LAUNCH_CHECK();
}

}  // namespace pyresa::cuda
