#include <nanobind/nanobind.h>
namespace nb = nanobind;
void bind_resa_ops(nb::module_&) {}
