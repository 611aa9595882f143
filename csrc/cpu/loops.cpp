// The CPU inner loops, compiled once per vector ISA, and the dispatch among them.
//
// The loop bodies (loops_body.h) are included three times, each in its own namespace: under
// `#pragma GCC target("arch=x86-64-v4")` (AVX-512), `"arch=x86-64-v3"` (AVX2 + FMA) and with
// the build's baseline flags (generic). Each namespace yields a table of function pointers; the
// functions of loops.h call the table of the ISA in use, chosen when the library loads (the
// widest this CPU runs) or by set_isa (isa.h). Unlike GCC's target_clones (an ifunc resolved
// by the loader), this choice can be forced, so every variant can be tested on one machine.
#include "cpu/loops.h"

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "kernels/math.h"

// GCC 12 or later on x86-64: the first with __builtin_cpu_supports("x86-64-v4") (PR 101696).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    !defined(FASTCL_NO_CLONES)
#define FASTCL_X86_VARIANTS 1
#else
#define FASTCL_X86_VARIANTS 0
#endif

namespace fastcl {
namespace cpu {
namespace k = ::fastcl::kernels;

// One ISA's loops: a member per entry of FASTCL_CPU_LOOPS, same name and signature.
template <typename T>
struct Loops {
#define FASTCL_LOOP_MEMBER(R, name, params, args) R(*name) params;
  FASTCL_CPU_LOOPS(FASTCL_LOOP_MEMBER, T)
#undef FASTCL_LOOP_MEMBER
};

#if FASTCL_X86_VARIANTS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace avx512 {
#include "cpu/loops_body.h"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
#include "cpu/loops_body.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace generic {
#include "cpu/loops_body.h"
}  // namespace generic

namespace {

// Every variant of this build, widest first.
struct Variant {
  const char* name;
  const Loops<float>* f;
  const Loops<double>* d;
  bool (*cpu_runs)();
};

const Variant kVariants[] = {
#if FASTCL_X86_VARIANTS
    {"avx512", &avx512::kLoops<float>, &avx512::kLoops<double>,
     [] { return bool(__builtin_cpu_supports("x86-64-v4")); }},
    {"avx2", &avx2::kLoops<float>, &avx2::kLoops<double>,
     [] { return bool(__builtin_cpu_supports("x86-64-v3")); }},
#endif
    {"generic", &generic::kLoops<float>, &generic::kLoops<double>, [] { return true; }},
};
constexpr int kNumVariants = sizeof(kVariants) / sizeof(kVariants[0]);

bool runs(int i) {
#if FASTCL_X86_VARIANTS
  __builtin_cpu_init();  // may run before the libgcc constructor that sets the CPU model
#endif
  return kVariants[i].cpu_runs();
}

int widest() {
  for (int i = 0; i < kNumVariants; ++i)
    if (runs(i)) return i;
  return kNumVariants - 1;
}

// Index into kVariants of the ISA in use; -1 until the first use, which picks the widest.
// Constant-initialised: valid before any static constructor runs.
std::atomic<int> g_active{-1};

int active() {
  int i = g_active.load(std::memory_order_relaxed);
  if (i >= 0) return i;
  int unset = -1;
  g_active.compare_exchange_strong(unset, widest());  // unless set_isa came first
  return g_active.load();
}

template <typename T>
const Loops<T>& table();
template <>
const Loops<float>& table<float>() {
  return *kVariants[active()].f;
}
template <>
const Loops<double>& table<double>() {
  return *kVariants[active()].d;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::string isa_name() { return kVariants[active()].name; }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = 0; i < kNumVariants; ++i)
    if (runs(i)) out.push_back(kVariants[i].name);
  return out;
}

void set_isa(const std::string& name) {
  if (name == "auto") {
    g_active.store(widest());
    return;
  }
  for (int i = 0; i < kNumVariants; ++i) {
    if (name != kVariants[i].name) continue;
    if (!runs(i))
      throw std::invalid_argument("cpu ISA '" + name + "' is not supported by this CPU, which runs: " +
                                  joined(supported_isas()));
    g_active.store(i);
    return;
  }
  const bool known = name == "avx512" || name == "avx2" || name == "generic";
  throw std::invalid_argument(
      "cpu ISA '" + name + "' " +
      (known ? "is not compiled into this build (not GCC >= 12 on x86-64)"
             : "is unknown: expected auto, avx512, avx2 or generic") +
      "; this machine runs: " + joined(supported_isas()));
}

// The functions of loops.h: the same loop of the ISA in use.
#define FASTCL_FORWARD_LOOP(R, name, params, args) \
  R name params { return table<FASTCL_T>().name args; }
#define FASTCL_T float
FASTCL_CPU_LOOPS(FASTCL_FORWARD_LOOP, float)
#undef FASTCL_T
#define FASTCL_T double
FASTCL_CPU_LOOPS(FASTCL_FORWARD_LOOP, double)
#undef FASTCL_T
#undef FASTCL_FORWARD_LOOP

}  // namespace cpu
}  // namespace fastcl
