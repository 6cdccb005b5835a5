// Which x86 vector instructions a kernel may use, chosen at run time from the CPU's features, so
// that one portable build (-march=x86-64-v3, setup.py) runs the AVX-512 paths where the CPU has
// them. A path for an instruction set is a function with __attribute__((target(...))), called only
// after cpu_isa() says the CPU has it.
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#define MQNET_FAST_X86 1
#endif

namespace mqnet_fast {

enum class CpuIsa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

inline CpuIsa best_cpu_isa() {
#if defined(MQNET_FAST_X86)
  static const CpuIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return CpuIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
    return CpuIsa::kGeneric;
  }();
  return best;
#else
  return CpuIsa::kGeneric;
#endif
}

// The best path this CPU runs, capped by MQNET_FAST_CPU_ISA (avx512, avx2 or generic) when it is
// set: tests and benchmarks use it to run every path on one machine. Read at each call.
inline CpuIsa cpu_isa() {
  const CpuIsa best = best_cpu_isa();
  const char* cap = std::getenv("MQNET_FAST_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return best;
  CpuIsa want;
  if (std::strcmp(cap, "avx512") == 0) {
    want = CpuIsa::kAvx512;
  } else if (std::strcmp(cap, "avx2") == 0) {
    want = CpuIsa::kAvx2;
  } else if (std::strcmp(cap, "generic") == 0) {
    want = CpuIsa::kGeneric;
  } else {
    TORCH_CHECK(false, "MQNET_FAST_CPU_ISA must be avx512, avx2 or generic, got '", cap, "'");
  }
  return static_cast<CpuIsa>(std::min(static_cast<int>(want), static_cast<int>(best)));
}

}  // namespace mqnet_fast
