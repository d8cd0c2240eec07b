// kquants kernels for the scalar ISA: fills this family's entries of the kernel table.
#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu::scalar {

void fill_kquants_kernels(CpuKernels& k) { (void)k; }

}  // namespace pyresa::cpu::scalar
