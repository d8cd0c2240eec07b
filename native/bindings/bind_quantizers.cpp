// Bindings for the weight quantizers (native/formats/quantize.h), used by pyresa-convert.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <stdexcept>
#include <string>

#include "formats/ggml_types.h"
#include "formats/quantize.h"

namespace nb = nanobind;
using namespace pyresa;

namespace {
using Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
}

void bind_quantizers(nb::module_& m) {
  m.def("can_quantize", [](int type_id) {
    return is_valid_type(type_id) && weight_quantizer(static_cast<GgmlType>(type_id)) != nullptr;
  }, nb::arg("type"), "Whether quantize_matrix can write this ggml type.");

  m.def("quantize_matrix", [](int type_id, Matrix x, int n_threads) {
    if (!is_valid_type(type_id)) throw std::invalid_argument("unknown ggml type id " + std::to_string(type_id));
    const GgmlType t = static_cast<GgmlType>(type_id);
    const int64_t rows = (int64_t)x.shape(0), cols = (int64_t)x.shape(1);
    const size_t rs = row_size(t, cols);
    auto* out = new uint8_t[(size_t)rows * rs];
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
    {
      nb::gil_scoped_release unlocked;
      quantize_rows(t, x.data(), out, rows, cols, n_threads);
    }
    return nb::ndarray<nb::numpy, uint8_t, nb::ndim<2>>(out, {(size_t)rows, rs}, owner);
  }, nb::arg("type"), nb::arg("x"), nb::arg("n_threads") = 0,
     "Quantize a float32 matrix (rows x cols) row by row into ggml blocks: a uint8 array of "
     "rows x row_size(type, cols). n_threads 0 uses every hardware thread.");
}
