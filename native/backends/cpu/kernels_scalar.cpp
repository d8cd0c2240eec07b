// Kernel table for the scalar ISA. (Compiled with this ISA's flags: see CMakeLists.txt.)
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

const CpuKernels* kernels_scalar() {
  static const CpuKernels table = [] {
    CpuKernels k;
    k.isa = "scalar";
    return k;
  }();
  return &table;
}

}  // namespace pyresa::cpu
