// Shared by the CUDA sources: error checks that become pyresa exceptions, device memory that
// says how much it needed when it runs out, and small device helpers (warp reductions, halves).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/errors.h"

namespace pyresa::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

#define PYRESA_CUDA_CHECK(expr)                                                     \
  do {                                                                              \
    cudaError_t pyresa_err_ = (expr);                                               \
    if (pyresa_err_ != cudaSuccess) ::pyresa::cuda::throw_cuda_error(pyresa_err_, #expr, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define PYRESA_CUDA_LAUNCH_CHECK() PYRESA_CUDA_CHECK(cudaGetLastError())

std::string mib(size_t bytes);

// cudaMalloc that throws DeviceMemoryError naming `what`, the size and the device's free memory.
void* device_alloc(size_t bytes, const char* what);

// An owning device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const char* what) : ptr_(bytes ? device_alloc(bytes, what) : nullptr), bytes_(bytes) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) { reset(); ptr_ = o.ptr_; bytes_ = o.bytes_; o.ptr_ = nullptr; o.bytes_ = 0; }
    return *this;
  }
  void reset();
  template <typename T = void> T* get() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---- device helpers -------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace pyresa::cuda
