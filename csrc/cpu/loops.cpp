// The CPU inner loops, compiled for several vector ISAs (GCC target_clones: the dynamic
// loader resolves each function to the widest clone this CPU runs). The math is the shared
// per-element code of csrc/kernels/math.h, inlined and auto-vectorised by -O3.
#include "cpu/loops.h"

#include <string>

#include "cpu/isa.h"
#include "kernels/math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTCL_NO_CLONES)
#define FASTCL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTCL_CLONES
#endif

namespace fastcl {
namespace cpu {
namespace k = ::fastcl::kernels;

std::string isa_name() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTCL_NO_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
  return "generic";
#else
  return "generic";
#endif
}

// Block size of the trajectory shift: the running sums of one block live on the stack.
constexpr int64_t kShiftBlock = 1024;

#define FASTCL_DEFINE_LOOPS(T)                                                                   \
  FASTCL_CLONES void sgd_loop(T* out, const T* p, const T* g, T lr, int64_t n) {                \
    for (int64_t i = 0; i < n; ++i) out[i] = k::sgd(p[i], g[i], lr);                            \
  }                                                                                              \
  FASTCL_CLONES void prox_sgd_loop(T* out, const T* p, const T* g, const T* a, const T* h, T lr,\
                                   T prox, int64_t n) {                                          \
    for (int64_t i = 0; i < n; ++i) out[i] = k::prox_sgd(p[i], g[i], a[i], h[i], lr, prox);    \
  }                                                                                              \
  FASTCL_CLONES void taylor_loop(T* h, const T* g, const T* p, T decay, T one_minus_decay,      \
                                 int64_t n) {                                                    \
    for (int64_t i = 0; i < n; ++i) h[i] = k::taylor(h[i], g[i], p[i], decay, one_minus_decay); \
  }                                                                                              \
  FASTCL_CLONES void emcl_meta_loop(T* p, const T* pk, T* h, T* a, const T* g, T lam, T decay,   \
                                    T one_minus_decay, T r, int lr_mode, T alpha0, T eps,        \
                                    int64_t n) {                                                 \
    if (lr_mode == 0) {                                                                          \
      for (int64_t i = 0; i < n; ++i)                                                            \
        k::emcl_meta(p[i], pk[i], h[i], a[i], g[i], lam, decay, one_minus_decay, r, 0, alpha0,   \
                     eps);                                                                       \
    } else if (lr_mode == 1) {                                                                   \
      for (int64_t i = 0; i < n; ++i)                                                            \
        k::emcl_meta(p[i], pk[i], h[i], a[i], g[i], lam, decay, one_minus_decay, r, 1, alpha0,   \
                     eps);                                                                       \
    } else {                                                                                     \
      for (int64_t i = 0; i < n; ++i)                                                            \
        k::emcl_meta(p[i], pk[i], h[i], a[i], g[i], lam, decay, one_minus_decay, r, 2, alpha0,   \
                     eps);                                                                       \
    }                                                                                            \
  }                                                                                              \
  FASTCL_CLONES void shift_loop(T* phi, T* thetas, int64_t num_learners, int64_t stride,        \
                                T meta_lr, bool shift, int64_t n) {                              \
    T acc[kShiftBlock];                                                                          \
    const T count = T(num_learners);                                                             \
    for (int64_t j0 = 0; j0 < n; j0 += kShiftBlock) {                                            \
      const int64_t len = n - j0 < kShiftBlock ? n - j0 : kShiftBlock;                           \
      const T* t0 = thetas + j0;                                                                 \
      for (int64_t j = 0; j < len; ++j) acc[j] = t0[j];                                          \
      for (int64_t t = 1; t < num_learners; ++t) {                                               \
        const T* tt = thetas + t * stride + j0;                                                  \
        for (int64_t j = 0; j < len; ++j) acc[j] += tt[j];                                       \
      }                                                                                          \
      T* ph = phi + j0;                                                                          \
      for (int64_t j = 0; j < len; ++j) {                                                        \
        const T d = k::shift_delta(acc[j] / count, ph[j], meta_lr);                                \
        acc[j] = d;                                                                              \
        ph[j] += d;                                                                              \
      }                                                                                          \
      if (shift) {                                                                               \
        for (int64_t t = 0; t < num_learners; ++t) {                                             \
          T* tt = thetas + t * stride + j0;                                                      \
          for (int64_t j = 0; j < len; ++j) tt[j] += acc[j];                                     \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
  }

FASTCL_DEFINE_LOOPS(float)
FASTCL_DEFINE_LOOPS(double)
#undef FASTCL_DEFINE_LOOPS

// The loops of mlp_prox_steps_. The reductions use `omp simd` (compiled with -fopenmp): without
// it GCC keeps a float sum in source order, one lane at a time.
#define FASTCL_DEFINE_MLP_LOOPS(T)                                                               \
  FASTCL_CLONES void prox_setup_loop(T* p, const T* a, const T* h, T* inv, T prox, int64_t n) {  \
    for (int64_t i = 0; i < n; ++i) {                                                            \
      inv[i] = T(1) / (prox * h[i] + T(1));                                                      \
      p[i] -= a[i];                                                                              \
    }                                                                                            \
  }                                                                                              \
  FASTCL_CLONES void add_loop(T* p, const T* a, int64_t n) {                                     \
    for (int64_t i = 0; i < n; ++i) p[i] += a[i];                                                \
  }                                                                                              \
  FASTCL_CLONES T row_dot(const T* q, const T* a, const T* x, int64_t n) {                       \
    T acc = 0;                                                                                   \
    if (a) {                                                                                     \
      _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; ++i) acc +=              \
          (q[i] + a[i]) * x[i];                                                                  \
    } else {                                                                                     \
      _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; ++i) acc += q[i] * x[i]; \
    }                                                                                            \
    return acc;                                                                                  \
  }                                                                                              \
  FASTCL_CLONES T row_step_dot(T* q, const T* inv, const T* act, T scale, const T* next,         \
                               int64_t n) {                                                      \
    T acc = 0;                                                                                   \
    if (inv && next) {                                                                           \
      _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; ++i) {                   \
        const T v = (q[i] + scale * act[i]) * inv[i];                                            \
        q[i] = v;                                                                                \
        acc += v * next[i];                                                                      \
      }                                                                                          \
    } else if (inv) {                                                                            \
      for (int64_t i = 0; i < n; ++i) q[i] = (q[i] + scale * act[i]) * inv[i];                   \
    } else if (next) {                                                                           \
      _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; ++i) {                   \
        const T v = q[i] + scale * act[i];                                                       \
        q[i] = v;                                                                                \
        acc += v * next[i];                                                                      \
      }                                                                                          \
    } else {                                                                                     \
      for (int64_t i = 0; i < n; ++i) q[i] += scale * act[i];                                    \
    }                                                                                            \
    return acc;                                                                                  \
  }                                                                                              \
  FASTCL_CLONES void row_back_step(T* q, const T* a, const T* inv, const T* act, T scale, T d,   \
                                   T* dprev, int64_t n) {                                        \
    if (a) {                                                                                     \
      for (int64_t i = 0; i < n; ++i) {                                                          \
        dprev[i] += d * (q[i] + a[i]);                                                           \
        q[i] = (q[i] + scale * act[i]) * inv[i];                                                 \
      }                                                                                          \
    } else {                                                                                     \
      for (int64_t i = 0; i < n; ++i) {                                                          \
        dprev[i] += d * q[i];                                                                    \
        q[i] += scale * act[i];                                                                  \
      }                                                                                          \
    }                                                                                            \
  }

FASTCL_DEFINE_MLP_LOOPS(float)
FASTCL_DEFINE_MLP_LOOPS(double)
#undef FASTCL_DEFINE_MLP_LOOPS

}  // namespace cpu
}  // namespace fastcl
