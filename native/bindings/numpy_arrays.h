// NumPy arrays handed back to Python that own their C++ memory (freed with the array).
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <utility>
#include <vector>

namespace pyresa::bindings {

namespace nb = nanobind;

// Moves v into a NumPy array of the given shape (no copy).
template <typename T>
nb::ndarray<nb::numpy, T> numpy_array(std::vector<T>&& v, std::vector<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.data(), owner);
}

// An uninitialised float32 array for C++ to fill (logits: no zeroing of large outputs).
inline nb::ndarray<nb::numpy, float> float_array(std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  float* data = new float[n];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return nb::ndarray<nb::numpy, float>(data, shape.size(), shape.data(), owner);
}

}  // namespace pyresa::bindings
