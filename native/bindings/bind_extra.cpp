// Hook for bindings added by later layers (ReSA ops, converter quantizers, CUDA).
#include <nanobind/nanobind.h>
namespace nb = nanobind;
void bind_resa_ops(nb::module_& m);
void bind_quantizers(nb::module_& m);
void bind_cuda(nb::module_& m);  // bind_cuda.cpp: the CUDA backend, or cuda_available() -> False
void bind_extra(nb::module_& m) {
  bind_resa_ops(m);
  bind_quantizers(m);
  bind_cuda(m);
}
