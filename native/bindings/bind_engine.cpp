#include <nanobind/nanobind.h>
namespace nb = nanobind;
void bind_engine(nb::module_&) {}
