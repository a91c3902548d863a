// Which dispatch paths (cpu_kernels.h) this build has and this CPU and OS can run.
// An instruction set is usable when CPUID reports it and the OS saves its registers
// (XCR0, read with xgetbv): AVX needs the SSE and AVX state, AVX-512 also the opmask and
// both ZMM states, AMX the tile config and tile data states and, on Linux, a per-process
// permission for the tile data (arch_prctl ARCH_REQ_XCOMP_PERM), asked for once here.
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define EW_X86_CPUID 1
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ew {

namespace amx {
// Linux >= 5.16 gives a process the AMX tile-data state only after it asks (the state is
// 8 KiB per thread); without the grant the first tile instruction faults.
bool request_tile_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) != 0) return false;
  return (granted >> kXfeatureXtiledata) & 1;
#else
  return false;
#endif
}
}  // namespace amx

namespace {

struct Features {
  bool avx2 = false, avx512 = false, avx512_bf16 = false, amx_bf16 = false;
  const char* amx_missing = "this build has no AMX kernels";
};

#ifdef EW_X86_CPUID
uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  const uint64_t x = xcr0();
  const bool os_avx = (x & 0x6) == 0x6;                 // SSE + AVX state
  const bool os_avx512 = os_avx && (x & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (x & 0x60000) == 0x60000;         // XTILECFG, XTILEDATA
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  const unsigned max_sub = a;
  bool avx512_bf16 = false;
  if (max_sub >= 1) {
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    avx512_bf16 = a1 & (1u << 5);
  }
  f.avx2 = os_avx && avx2 && fma && f16c;
  f.avx512 = f.avx2 && os_avx512 && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512_bf16 = f.avx512 && avx512_bf16;
#ifdef EW_HAVE_AMX_KERNELS
  if (!amx_tile || !amx_bf16) {
    f.amx_missing = "this CPU has no AMX-BF16 tiles (CPUID.7.0:EDX bits 22/24)";
  } else if (!os_amx) {
    f.amx_missing = "the OS does not enable the AMX tile state (XCR0 bits 17/18)";
  } else if (!f.avx512_bf16) {
    f.amx_missing = "AMX without AVX512_BF16 (the amx path uses both)";
  } else if (!amx::request_tile_permission()) {
    f.amx_missing = "the OS refused the AMX tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
  } else {
    f.amx_bf16 = true;
    f.amx_missing = "";
  }
#else
  (void)amx_tile;
  (void)amx_bf16;
  (void)os_amx;
#endif
  return f;
}
#else
Features detect() { return Features{}; }
#endif

const Features& features() {
  static const Features f = detect();
  return f;
}

}  // namespace

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::Portable: return "portable";
    case CpuPath::Avx2: return "avx2";
    case CpuPath::Avx512: return "avx512";
    case CpuPath::Avx512Bf16: return "avx512-bf16";
    case CpuPath::Amx: return "amx";
  }
  return "?";
}

const std::vector<CpuPath>& cpu_paths() {
  static const std::vector<CpuPath> paths = [] {
    std::vector<CpuPath> p{CpuPath::Portable};
    const Features& f = features();
#ifdef EW_HAVE_AVX2_KERNELS
    if (f.avx2) p.push_back(CpuPath::Avx2);
#endif
#ifdef EW_HAVE_AVX512_KERNELS
    if (f.avx512) p.push_back(CpuPath::Avx512);
    if (f.avx512_bf16) p.push_back(CpuPath::Avx512Bf16);
#endif
#ifdef EW_HAVE_AMX_KERNELS
    if (f.amx_bf16) p.push_back(CpuPath::Amx);
#endif
    (void)f;
    return p;
  }();
  return paths;
}

const char* amx_unavailable_reason() { return features().amx_missing; }

namespace {
bool is_intel() {
  static const bool intel = [] {
#ifdef EW_X86_CPUID
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "Genu" "ineI" "ntel"
#else
    return false;
#endif
  }();
  return intel;
}
}  // namespace

// One row at a time with each line prefetched 8 KB ahead (4 and 16 KB measured the same, 64
// KB less): on the Xeon with AMX 33-34 GB/s, 97-100% of the bandwidth probe, against 29-30
// for prefetched 4-row groups and 16 for no prefetch (a 420 MB GEMV of 4 KB rows); on AMD
// Zen 4 the stream without software prefetch measured 27-35 GB/s against 23-26 with it.
const void* gemv_prefetch_ahead(const void* W, int64_t row_bytes, int64_t n, int64_t n1) {
  constexpr int64_t kAheadBytes = 8 << 10;
  if (!is_intel() || (n + 1) * row_bytes + kAheadBytes > n1 * row_bytes) return nullptr;
  return static_cast<const char*>(W) + n * row_bytes + kAheadBytes;
}

bool amx_tile_model_runs() {
#ifdef EW_HAVE_AMX_KERNELS
  return features().avx512_bf16;
#else
  return false;
#endif
}

CpuPath cpu_path_named(const char* name) {
  std::string names;
  for (CpuPath p : cpu_paths()) {
    if (std::strcmp(name, cpu_path_name(p)) == 0) return p;
    names += std::string(names.empty() ? "" : ", ") + cpu_path_name(p);
  }
  if (std::strcmp(name, "amx") == 0 && *amx_unavailable_reason())
    fail("CPU path amx: ", amx_unavailable_reason(), "; this CPU and build run ", names);
  fail("CPU path ", name, ": this CPU and build run only ", names);
}

CpuPath cpu_path() {
  static const CpuPath path = [] {
    const char* env = std::getenv("EW_CPU_PATH");
    if (env && *env) {
      try {
        return cpu_path_named(env);
      } catch (const Error& e) {
        fail("EW_CPU_PATH=", env, ": ", e.what());
      }
    }
    CpuPath best = CpuPath::Portable;
    for (CpuPath p : cpu_paths())
      if (!rounds_activations(p)) best = p;
    return best;
  }();
  return path;
}

}  // namespace ew
