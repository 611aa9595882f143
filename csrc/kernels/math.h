// Per-element math of every fused update, shared by the CPU kernels (csrc/cpu) and the
// CUDA kernels (csrc/cuda). No torch headers: this file compiles under g++ and nvcc alone.
//
// T is the math type (float for float/half/bfloat16 storage, double for double). Scalars
// are precomputed on the host in double and cast once to T, the way PyTorch's eager
// kernels cast a Python scalar, so the fused ops agree with the references to rounding.
#pragma once

#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTCL_HD __host__ __device__ __forceinline__
#else
#define FASTCL_HD inline
#endif

namespace fastcl {
namespace kernels {

FASTCL_HD float abs_(float x) { return fabsf(x); }
FASTCL_HD double abs_(double x) { return fabs(x); }

// Plain SGD: theta - lr*g.
template <typename T>
FASTCL_HD T sgd(T p, T g, T lr) {
  return p - lr * g;
}

// EMCL Eq. 16, 17 with the closed-form prox of Eq. 21:
//   theta <- (theta - lr*g + prox*h*theta0) / (prox*h + 1),  prox = gamma*lambda.
template <typename T>
FASTCL_HD T prox_sgd(T p, T g, T a, T h, T lr, T prox) {
  const T c = prox * h;
  return (p - lr * g + c * a) / (c + T(1));
}

// EMCL Eq. 7 with Omega of Eq. 13: h <- decay*h + (1-decay)*|g*theta|.
template <typename T>
FASTCL_HD T taylor(T h, T g, T p, T decay, T one_minus_decay) {
  return decay * h + one_minus_decay * abs_(g * p);
}

// min(x, 1) that propagates nan, as torch.clamp(x, max=1) does.
template <typename T>
FASTCL_HD T clamp_max_one(T x) {
  return x > T(1) ? T(1) : x;
}

// EMCL meta step for one element (Eq. 10, 8, 7, 13); see fastcl/ops/reference.py.
//   p: theta0 (in/out), pk: theta_k, h: importance (in/out), a: meta lr (in/out), g: grad.
template <typename T>
FASTCL_HD void emcl_meta(T& p, T pk, T& h, T& a, T g, T lam, T decay, T one_minus_decay, T r,
                         int lr_mode, T alpha0, T eps) {
  const T meta_grad = lam * h * (p - pk);
  const T h_new = taylor(h, g, p, decay, one_minus_decay);
  p = p - a * meta_grad;
  h = h_new;
  const T inverse = r / (h_new + eps);
  a = lr_mode == 0 ? a * r / (h_new + eps)
                   : alpha0 * (lr_mode == 1 ? clamp_max_one(inverse) : inverse);
}

// CTS / Reptile: delta = meta_lr * (mean_T theta - phi).
template <typename T>
FASTCL_HD T shift_delta(T mean, T phi, T meta_lr) {
  return meta_lr * (mean - phi);
}

// ---- episodic memory ----

// Row of ring (task, cls) that the example with within-batch rank `rank` of that ring goes to:
// the ring had `count` examples inserted before the batch; it has m slots.
FASTCL_HD long long ring_slot(long long task, long long cls, long long num_classes, long long m,
                              long long count, long long rank) {
  return (task * num_classes + cls) * m + (count + rank) % m;
}

// Whether the example is still in the ring after the whole batch: it is overwritten by a later
// example of its ring iff at least m examples of that ring come after it in the batch.
FASTCL_HD bool ring_survives(long long later_same_ring, long long m) {
  return later_same_ring < m;
}

// Algorithm R: slot of stream example number s (0-based), u uniform in [0, 1); -1: dropped.
FASTCL_HD long long reservoir_slot(long long s, double u, long long capacity) {
  if (s < capacity) return s;
  const long long j = static_cast<long long>(u * static_cast<double>(s + 1));
  return j < capacity ? j : -1;
}

}  // namespace kernels
}  // namespace fastcl
