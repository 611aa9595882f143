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
                  bool shift, int64_t n);                                                        \
  /* mlp_prox_steps_ (csrc/cpu/mlp_ops.cpp), weights held as q = theta - theta0:         */    \
  /* inv <- 1/(prox*h + 1) and p <- p - a.                                               */    \
  void prox_setup_loop(T* p, const T* a, const T* h, T* inv, T prox, int64_t n);               \
  void add_loop(T* p, const T* a, int64_t n); /* p <- p + a */                                  \
  /* dot(q + a, x); a may be null (q alone). */                                                 \
  T row_dot(const T* q, const T* a, const T* x, int64_t n);                                    \
  /* q <- (q + scale*act) * inv (inv may be null: no factor); returns dot(q_new, next),    */  \
  /* or 0 when next is null.                                                              */  \
  T row_step_dot(T* q, const T* inv, const T* act, T scale, const T* next, int64_t n);         \
  /* dprev += d*(q + a) with the old q, then q <- (q + scale*act) * inv (a and inv both    */  \
  /* given, or both null: then dprev += d*q and q <- q + scale*act).                       */  \
  void row_back_step(T* q, const T* a, const T* inv, const T* act, T scale, T d, T* dprev,     \
                     int64_t n);

FASTCL_DECLARE_LOOPS(float)
FASTCL_DECLARE_LOOPS(double)
#undef FASTCL_DECLARE_LOOPS

}  // namespace cpu
}  // namespace fastcl
