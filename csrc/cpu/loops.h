// Raw-pointer inner loops of the CPU kernels, one per fused update, for float and double.
//
// Each is compiled three times (AVX-512 / AVX2+FMA / generic x86-64, see loops.cpp) and the
// widest clone the CPU supports is chosen when the library loads. They process elements
// [0, n) of contiguous buffers; the caller splits the work across threads. Output pointers
// may alias inputs of the same element (in place), never other elements.
#pragma once
#include <cstdint>

namespace fastcl {
namespace cpu {

#define FASTCL_DECLARE_LOOPS(T)                                                                  \
  void sgd_loop(T* out, const T* p, const T* g, T lr, int64_t n);                               \
  void prox_sgd_loop(T* out, const T* p, const T* g, const T* a, const T* h, T lr, T prox,      \
                     int64_t n);                                                                 \
  void taylor_loop(T* h, const T* g, const T* p, T decay, T one_minus_decay, int64_t n);       \
  void emcl_meta_loop(T* p, const T* pk, T* h, T* a, const T* g, T lam, T decay,                \
                      T one_minus_decay, T r, int lr_mode, T alpha0, T eps, int64_t n);         \
  /* thetas: element j of learner t at thetas[t*stride + j], j in [0, n). */                    \
  void shift_loop(T* phi, T* thetas, int64_t num_learners, int64_t stride, T meta_lr,          \
                  bool shift, int64_t n);

FASTCL_DECLARE_LOOPS(float)
FASTCL_DECLARE_LOOPS(double)
#undef FASTCL_DECLARE_LOOPS

}  // namespace cpu
}  // namespace fastcl
