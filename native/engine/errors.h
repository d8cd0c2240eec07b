// Errors the native core raises; bindings map each to a pyresa.PyresaError subclass.
#pragma once
#include <stdexcept>
#include <string>

namespace pyresa {

struct PyresaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The model file is malformed: wrong shapes, missing tensors, bad metadata.
struct ModelFormatError : PyresaError {
  using PyresaError::PyresaError;
};
// A valid file that uses something pyresa does not support (architecture, tensor type).
struct UnsupportedError : PyresaError {
  using PyresaError::PyresaError;
};
// The tokens do not fit in the context window.
struct ContextFullError : PyresaError {
  using PyresaError::PyresaError;
};
// Out of memory on a device (GPU); the message says how much was needed.
struct DeviceMemoryError : PyresaError {
  using PyresaError::PyresaError;
};

}  // namespace pyresa
