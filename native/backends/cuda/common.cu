#include "backends/cuda/common.cuh"

#include <cstdio>

namespace pyresa::cuda {

std::string mib(size_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return buf;
}

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") in " +
                    what + " at " + file + ":" + std::to_string(line);
  if (err == cudaErrorMemoryAllocation) throw DeviceMemoryError(msg);
  throw PyresaError(msg);
}

void* device_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaSuccess) return p;
  cudaGetLastError();  // clear the sticky-free error state of a failed allocation
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  int dev = -1;
  cudaGetDevice(&dev);
  if (err == cudaErrorMemoryAllocation)
    throw DeviceMemoryError("CUDA out of memory: " + std::string(what) + " needs " + mib(bytes) + ", device " +
                            std::to_string(dev) + " has " + mib(free_b) + " free of " + mib(total_b));
  throw_cuda_error(err, what, __FILE__, __LINE__);
}

void DeviceBuffer::reset() {
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

}  // namespace pyresa::cuda

namespace pyresa::cuda_bind {
// Device buffers handed to Python (CuPy via DLPack); freed when the array's owner is released.
void* device_alloc_for_python(size_t bytes, int device) {
  PYRESA_CUDA_CHECK(cudaSetDevice(device));
  return cuda::device_alloc(bytes ? bytes : 4, "logits on the device");
}
void device_free_for_python(void* p, int) noexcept { cudaFree(p); }
}  // namespace pyresa::cuda_bind

namespace pyresa::cuda {
bool& pdl_enabled() {
  static bool on = false;
  return on;
}
}  // namespace pyresa::cuda
