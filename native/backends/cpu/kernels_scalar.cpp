// Kernel table for the scalar ISA. Each family's file is compiled with this ISA's flags
// (CMakeLists.txt picks them from the _scalar.cpp suffix).
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace scalar {
void fill_legacy_kernels(CpuKernels& k);   // F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, float helpers
void fill_kquants_kernels(CpuKernels& k);  // Q4_K, Q5_K, Q6_K, Q8_K
}  // namespace scalar

const CpuKernels* kernels_scalar() {
  static const CpuKernels table = [] {
    CpuKernels k;
    k.isa = "scalar";
    scalar::fill_legacy_kernels(k);
    scalar::fill_kquants_kernels(k);
    return k;
  }();
  return &table;
}

}  // namespace pyresa::cpu
