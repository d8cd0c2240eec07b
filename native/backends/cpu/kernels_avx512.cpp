// Kernel table for the avx512 ISA. Each family's file is compiled with this ISA's flags
// (CMakeLists.txt picks them from the _avx512.cpp suffix).
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace avx512 {
void fill_legacy_kernels(CpuKernels& k);   // F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, float helpers
void fill_kquants_kernels(CpuKernels& k);  // Q4_K, Q5_K, Q6_K, Q8_K
}  // namespace avx512

const CpuKernels* kernels_avx512() {
  static const CpuKernels table = [] {
    // Start from the next ISA down, so any kernel this ISA does not specialise still runs.
    CpuKernels k = *kernels_avx2();
    k.isa = "avx512";
    avx512::fill_legacy_kernels(k);
    avx512::fill_kquants_kernels(k);
    return k;
  }();
  return &table;
}

}  // namespace pyresa::cpu
