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
