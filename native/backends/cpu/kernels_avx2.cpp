// Kernel table for the avx2 ISA. (Compiled with this ISA's flags: see CMakeLists.txt.)
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

const CpuKernels* kernels_avx2() {
  static const CpuKernels table = [] {
    CpuKernels k;
    k.isa = "avx2";
    return k;
  }();
  return &table;
}

}  // namespace pyresa::cpu
