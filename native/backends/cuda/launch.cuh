// Kernel launches with programmatic dependent launch (PDL, sm_90): each kernel may start (be
// scheduled, prefetch its weights into L2) while the one before it drains; it waits in
// pdl_wait() before it reads anything the previous kernel wrote. Captured into the decode graph
// as programmatic edges. On GPUs before Hopper the attribute is not set and pdl_wait is empty.
#pragma once
#include <cuda_runtime.h>

#include "backends/cuda/common.cuh"

namespace pyresa::cuda {

// Whether launches ask for PDL (set once per process from the device's compute capability).
bool& pdl_enabled();

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// Early trigger: lets the next kernel in the stream be scheduled as soon as every CTA of this
// one has called it (or exited), instead of after the last CTA exits. The next kernel's CTAs then
// fill the SMs this one's last wave leaves idle and pull their weights into L2 (their code before
// pdl_wait reads only weights); pdl_wait still waits for this whole grid and its memory.
// Every kernel that calls it must call pdl_wait before reading or writing activations, so the
// chain stays ordered: a kernel can complete only after its predecessor has.
// Switched per translation unit by a __constant__ flag (PYRESA_CUDA_PDL_EARLY=0 turns it off).
static __constant__ int pdl_early_flag = 1;
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pdl_early_flag) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Sets this translation unit's flag (each .cu that calls pdl_trigger exports a setter).
static inline void set_pdl_early_this_unit(bool on) {
  const int v = on ? 1 : 0;
  PYRESA_CUDA_CHECK(cudaMemcpyToSymbol(pdl_early_flag, &v, sizeof v));
}
// The setters of the units that trigger early (quant.cu, ops.cu).
void set_pdl_early_quant(bool on);
void set_pdl_early_ops(bool on);

// Bulk prefetch of [p, p + bytes) into L2 (one instruction, sm_90): p and bytes multiples of 16.
__device__ __forceinline__ void prefetch_l2_bulk(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
  for (uint32_t off = 0; off < bytes; off += 128) prefetch_l2(static_cast<const char*>(p) + off);
#endif
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  PYRESA_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

}  // namespace pyresa::cuda
