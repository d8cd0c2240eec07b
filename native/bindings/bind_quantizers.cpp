#include <nanobind/nanobind.h>
namespace nb = nanobind;
void bind_quantizers(nb::module_&) {}
