// Run-time choice of the CPU vector ISA.
//
// The raw-pointer loops in csrc/cpu/loops.cpp are compiled for AVX-512, AVX2+FMA and generic
// x86-64 with GCC's target_clones; the dynamic loader picks the widest clone the CPU runs
// (an ifunc), so one build runs on any x86-64. isa_name() reports the same choice.
#pragma once
#include <string>

namespace fastcl {
namespace cpu {
std::string isa_name();
}  // namespace cpu
}  // namespace fastcl
