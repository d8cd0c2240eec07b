// Bindings for the quantization kernels: used by tests to check every ISA against gguf's
// dequantization and a float64 reference, and by tools that inspect tensors.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "backends/cpu/cpu_kernels.h"
#include "formats/ggml_types.h"
#include "bindings/numpy_arrays.h"

namespace nb = nanobind;
using namespace pyresa;

namespace {

GgmlType checked_type(int type_id) {
  if (!is_valid_type(type_id)) throw std::invalid_argument("unknown ggml type id " + std::to_string(type_id));
  return static_cast<GgmlType>(type_id);
}

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Floats = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;


const cpu::TypeKernels& kernels_of(GgmlType t) {
  const auto& k = cpu::cpu_kernels().types[static_cast<int>(t)];
  return k;
}

}  // namespace

void bind_kernels(nb::module_& m) {
  m.def("supported_isas", &cpu::supported_isas, "CPU kernel sets this machine can run, best last.");
  m.def("set_cpu_isa", &cpu::set_cpu_isa, nb::arg("isa"), "Force a kernel set: 'auto', 'scalar', 'avx2', 'avx512'.");
  m.def("cpu_isa", []() { return std::string(cpu::cpu_kernels().isa); });
  m.def("row_size", [](int type_id, int64_t n) { return row_size(checked_type(type_id), n); });
  m.def("type_name", [](int type_id) { return std::string(type_traits(checked_type(type_id)).name); });
  m.def("vec_dot_type", [](int type_id) { return static_cast<int>(type_traits(checked_type(type_id)).vec_dot_type); });

  m.def("dequantize_row", [](int type_id, Bytes data, int64_t n) {
    GgmlType t = checked_type(type_id);
    if (data.size() < row_size(t, n)) throw std::invalid_argument("dequantize_row: too few bytes for the row");
    const auto& k = kernels_of(t);
    if (!k.dequantize_row) throw std::invalid_argument(std::string("no dequantize kernel for ") + type_traits(t).name);
    std::vector<float> out(n);
    k.dequantize_row(data.data(), out.data(), n);
    const size_t n_out = out.size();
    return bindings::numpy_array(std::move(out), {n_out});
  }, nb::arg("type"), nb::arg("data"), nb::arg("n"));

  m.def("quantize_row", [](int type_id, Floats x) {
    GgmlType t = checked_type(type_id);
    const auto& k = kernels_of(t);
    if (!k.quantize_row) throw std::invalid_argument(std::string("no activation quantizer for ") + type_traits(t).name);
    int64_t n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> out(row_size(t, n));
    k.quantize_row(x.data(), out.data(), n);
    const size_t n_out = out.size();
    return bindings::numpy_array(std::move(out), {n_out});
  }, nb::arg("type"), nb::arg("x"));

  m.def("vec_dot", [](int type_id, Bytes weight_row, Floats x) {
    GgmlType t = checked_type(type_id);
    int64_t n = static_cast<int64_t>(x.size());
    if (weight_row.size() < row_size(t, n)) throw std::invalid_argument("vec_dot: weight row too short");
    GgmlType at = type_traits(t).vec_dot_type;
    const auto& wk = kernels_of(t);
    const auto& ak = kernels_of(at);
    if (!wk.vec_dot || !ak.quantize_row) throw std::invalid_argument(std::string("no dot kernel for ") + type_traits(t).name);
    std::vector<uint8_t> act(row_size(at, n));
    ak.quantize_row(x.data(), act.data(), n);
    return wk.vec_dot(n, weight_row.data(), act.data());
  }, nb::arg("type"), nb::arg("weight_row"), nb::arg("x"),
     "Quantize x to the weight's activation format, then the ISA's dot product.");

  m.def("vec_dot_rows", [](int type_id, Bytes weight_row, nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu> x) {
    GgmlType t = checked_type(type_id);
    const int64_t n_acts = static_cast<int64_t>(x.shape(0)), n = static_cast<int64_t>(x.shape(1));
    if (weight_row.size() < row_size(t, n)) throw std::invalid_argument("vec_dot_rows: weight row too short");
    GgmlType at = type_traits(t).vec_dot_type;
    const auto& wk = kernels_of(t);
    const auto& ak = kernels_of(at);
    if (!wk.vec_dot || !ak.quantize_row) throw std::invalid_argument(std::string("no dot kernel for ") + type_traits(t).name);
    const size_t stride = row_size(at, n);
    std::vector<uint8_t> act(stride * n_acts);
    for (int64_t i = 0; i < n_acts; ++i) ak.quantize_row(x.data() + i * n, act.data() + i * stride, n);
    std::vector<float> out(n_acts);
    if (wk.vec_dot_rows) {
      wk.vec_dot_rows(n, weight_row.data(), act.data(), stride, static_cast<int>(n_acts), out.data(), 1);
    } else {
      for (int64_t i = 0; i < n_acts; ++i) out[i] = wk.vec_dot(n, weight_row.data(), act.data() + i * stride);
    }
    const size_t n_out = out.size();
    return bindings::numpy_array(std::move(out), {n_out});
  }, nb::arg("type"), nb::arg("weight_row"), nb::arg("x"),
     "vec_dot of one weight row with every row of x [n_acts, n], through the ISA's multi-row kernel\n"
     "where it has one (weight blocks unpacked once for several rows), else row by row.");
  m.def("has_vec_dot_rows", [](int type_id) { return kernels_of(checked_type(type_id)).vec_dot_rows != nullptr; },
        nb::arg("type"));
}
