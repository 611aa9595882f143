// The CPU vector ISA the inner loops run with.
//
// The raw-pointer loops of csrc/cpu/loops.cpp are compiled once per ISA: "avx512"
// (x86-64-v4), "avx2" (x86-64-v3: AVX2 + FMA) and "generic" (baseline x86-64), each a table
// of function pointers. When the library loads, the widest one this CPU runs is chosen; it can
// be forced (tests run every variant this way, fastcl/ops/_load.py reads FASTCL_ISA with it).
// Builds other than GCC >= 12 on x86-64 (clang, older GCC, other architectures, or
// -DFASTCL_NO_CLONES) hold "generic" alone.
#pragma once
#include <string>
#include <vector>

namespace fastcl {
namespace cpu {

// The ISA in use.
std::string isa_name();

// The ISAs this build holds and this CPU runs, widest first (always ends with "generic").
std::vector<std::string> supported_isas();

// Use the loops compiled for `name` from now on ("auto": the widest supported). Throws
// std::invalid_argument, naming the ISA and the supported ones, when `name` is unknown or not
// supported; the ISA in use is then unchanged. Switching while another thread runs a kernel is
// safe but that kernel may mix the two variants' rounding.
void set_isa(const std::string& name);

}  // namespace cpu
}  // namespace fastcl
