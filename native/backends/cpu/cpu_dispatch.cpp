#include <cstdlib>
#include <stdexcept>

#include "backends/cpu/cpu_kernels.h"

namespace pyresa::cpu {

namespace {

bool cpu_has(const std::string& isa) {
  if (isa == "scalar") return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return false;
}

const CpuKernels* table_for(const std::string& isa) {
  if (isa == "scalar") return kernels_scalar();
  if (isa == "avx2") return kernels_avx2();
  if (isa == "avx512") return kernels_avx512();
  return nullptr;
}

const CpuKernels* choose(const std::string& requested) {
  if (requested.empty() || requested == "auto") {
    auto isas = supported_isas();
    return table_for(isas.back());
  }
  if (!table_for(requested)) throw std::invalid_argument("unknown CPU ISA '" + requested + "' (scalar, avx2, avx512, auto)");
  if (!cpu_has(requested)) throw std::invalid_argument("this CPU does not support the '" + requested + "' kernels");
  return table_for(requested);
}

const CpuKernels* g_active = nullptr;

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"scalar", "avx2", "avx512"})
    if (table_for(isa) && cpu_has(isa)) out.push_back(isa);
  return out;
}

void set_cpu_isa(const std::string& isa) { g_active = choose(isa); }

const CpuKernels& cpu_kernels() {
  if (!g_active) {
    const char* env = std::getenv("PYRESA_CPU_ISA");
    g_active = choose(env ? env : "auto");
  }
  return *g_active;
}

}  // namespace pyresa::cpu
