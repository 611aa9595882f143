// Raw-pointer inner loops of the CPU kernels, one per fused update, for float and double.
//
// Each is compiled once per vector ISA (AVX-512 / AVX2+FMA / generic x86-64, see loops.cpp);
// the functions declared here call the variant of the ISA in use (csrc/cpu/isa.h: the widest
// the CPU runs, unless forced). They process elements [0, n) of contiguous buffers; the caller
// splits the work across threads. Output pointers may alias inputs of the same element (in
// place), never other elements. Every loop's result is a function of its arguments and the ISA
// alone: the reductions (row_dot, row_step_dot, rows_dot) sum in an order fixed by n, so a
// caller that splits rows across threads gets the same bits whatever the thread count.
#pragma once
#include <cstdint>

namespace fastcl {
namespace cpu {

// X(return type, name, (parameters), (arguments)) for every loop, with element type T: the one
// list from which the declarations, the per-ISA dispatch tables and the forwarding calls are
// generated (loops.cpp).
#define FASTCL_CPU_LOOPS(X, T)                                                                   \
  X(void, sgd_loop, (T * out, const T* p, const T* g, T lr, int64_t n), (out, p, g, lr, n))     \
  X(void, prox_sgd_loop,                                                                         \
    (T * out, const T* p, const T* g, const T* a, const T* h, T lr, T prox, int64_t n),         \
    (out, p, g, a, h, lr, prox, n))                                                              \
  X(void, taylor_loop, (T * h, const T* g, const T* p, T decay, T one_minus_decay, int64_t n),  \
    (h, g, p, decay, one_minus_decay, n))                                                        \
  X(void, emcl_meta_loop,                                                                        \
    (T * p, const T* pk, T* h, T* a, const T* g, T lam, T decay, T one_minus_decay, T r,        \
     int lr_mode, T alpha0, T eps, int64_t n),                                                   \
    (p, pk, h, a, g, lam, decay, one_minus_decay, r, lr_mode, alpha0, eps, n))                   \
  /* thetas: element j of learner t at thetas[t*stride + j], j in [0, n). */                    \
  X(void, shift_loop,                                                                            \
    (T * phi, T* thetas, int64_t num_learners, int64_t stride, T meta_lr, bool shift,           \
     int64_t n),                                                                                 \
    (phi, thetas, num_learners, stride, meta_lr, shift, n))                                      \
  /* mlp_prox_steps_ (csrc/cpu/mlp_ops.cpp), weights held as q = theta - theta0:         */    \
  /* inv <- 1/(prox*h + 1) and p <- p - a.                                               */    \
  X(void, prox_setup_loop, (T * p, const T* a, const T* h, T* inv, T prox, int64_t n),          \
    (p, a, h, inv, prox, n))                                                                     \
  /* p <- p + a */                                                                              \
  X(void, add_loop, (T * p, const T* a, int64_t n), (p, a, n))                                   \
  /* dot(q + a, x); a may be null (q alone). */                                                 \
  X(T, row_dot, (const T* q, const T* a, const T* x, int64_t n), (q, a, x, n))                  \
  /* out[s*out_stride] = dot(w, x + s*x_stride) for s in [0, m): one row against m vectors */  \
  /* (the rows of a row-major matrix), the row read once per block of vectors.            */  \
  X(void, rows_dot,                                                                              \
    (const T* w, const T* x, int64_t x_stride, int64_t m, T* out, int64_t out_stride,           \
     int64_t n),                                                                                 \
    (w, x, x_stride, m, out, out_stride, n))                                                     \
  /* q <- (q + scale*act) * inv (inv may be null: no factor); returns dot(q_new, next),    */  \
  /* or 0 when next is null.                                                              */  \
  X(T, row_step_dot, (T * q, const T* inv, const T* act, T scale, const T* next, int64_t n),    \
    (q, inv, act, scale, next, n))                                                               \
  /* dprev += d*(q + a) with the old q, then q <- (q + scale*act) * inv (a and inv both    */  \
  /* given, or both null: then dprev += d*q and q <- q + scale*act).                       */  \
  X(void, row_back_step,                                                                         \
    (T * q, const T* a, const T* inv, const T* act, T scale, T d, T* dprev, int64_t n),          \
    (q, a, inv, act, scale, d, dprev, n))

#define FASTCL_DECLARE_LOOP(R, name, params, args) R name params;
FASTCL_CPU_LOOPS(FASTCL_DECLARE_LOOP, float)
FASTCL_CPU_LOOPS(FASTCL_DECLARE_LOOP, double)
#undef FASTCL_DECLARE_LOOP

}  // namespace cpu
}  // namespace fastcl
