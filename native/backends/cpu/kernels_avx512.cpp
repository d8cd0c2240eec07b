// Kernel table for the avx512 ISA. (Compiled with this ISA's flags: see CMakeLists.txt.)
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

const CpuKernels* kernels_avx512() {
  static const CpuKernels table = [] {
    CpuKernels k;
    k.isa = "avx512";
    return k;
  }();
  return &table;
}

}  // namespace pyresa::cpu
