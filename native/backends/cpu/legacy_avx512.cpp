// legacy kernels for the avx512 ISA: fills this family's entries of the kernel table.
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu::avx512 {

void fill_legacy_kernels(CpuKernels& k) { (void)k; }

}  // namespace pyresa::cpu::avx512
