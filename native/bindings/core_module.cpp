// pyresa._core: thin nanobind bindings. No logic here: each bind_*.cpp exposes one layer.
#include <nanobind/nanobind.h>

namespace nb = nanobind;

void bind_errors(nb::module_& m);
void bind_kernels(nb::module_& m);
void bind_engine(nb::module_& m);
void bind_extra(nb::module_& m);

NB_MODULE(_core, m) {
  m.doc() = "pyresa native core";
  bind_errors(m);
  bind_kernels(m);
  bind_engine(m);
  bind_extra(m);
}
