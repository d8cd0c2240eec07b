// Native exceptions become Python classes; pyresa/errors.py re-exports them.
#include <nanobind/nanobind.h>

#include "engine/errors.h"

namespace nb = nanobind;

void bind_errors(nb::module_& m) {
  static nb::exception<pyresa::PyresaError> base(m, "PyresaError");
  static nb::exception<pyresa::ModelFormatError> format(m, "ModelFormatError", base.ptr());
  static nb::exception<pyresa::UnsupportedError> unsupported(m, "UnsupportedError", base.ptr());
  static nb::exception<pyresa::ContextFullError> context(m, "ContextFullError", base.ptr());
  static nb::exception<pyresa::DeviceMemoryError> memory(m, "DeviceMemoryError", base.ptr());
}
