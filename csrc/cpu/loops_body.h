// The bodies of the CPU inner loops (declared and documented in csrc/cpu/loops.h), as templates
// over the element type. No include guard: loops.cpp includes this file once per vector ISA,
// inside that ISA's namespace and under its `#pragma GCC target`, so that each copy is compiled
// (and auto-vectorised by -O3) for its own instruction set. The per-element math is the shared
// code of csrc/kernels/math.h, inlined. The reductions use `omp simd` (compiled with -fopenmp):
// without it GCC keeps a float sum in source order, one lane at a time; their order depends on
// n and the ISA only.

// Block size of the trajectory shift: the running sums of one block live on the stack.
constexpr int64_t kShiftBlock = 1024;

template <typename T>
void sgd_loop(T* out, const T* p, const T* g, T lr, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = k::sgd(p[i], g[i], lr);
}

template <typename T>
void prox_sgd_loop(T* out, const T* p, const T* g, const T* a, const T* h, T lr, T prox, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = k::prox_sgd(p[i], g[i], a[i], h[i], lr, prox);
}

template <typename T>
void taylor_loop(T* h, const T* g, const T* p, T decay, T one_minus_decay, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = k::taylor(h[i], g[i], p[i], decay, one_minus_decay);
}

// lr_mode as a template argument: one vectorised loop per mode, no branch inside.
template <int kMode, typename T>
void emcl_meta_mode(T* p, const T* pk, T* h, T* a, const T* g, T lam, T decay, T one_minus_decay,
                    T r, T alpha0, T eps, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    k::emcl_meta(p[i], pk[i], h[i], a[i], g[i], lam, decay, one_minus_decay, r, kMode, alpha0, eps);
}

template <typename T>
void emcl_meta_loop(T* p, const T* pk, T* h, T* a, const T* g, T lam, T decay, T one_minus_decay,
                    T r, int lr_mode, T alpha0, T eps, int64_t n) {
  if (lr_mode == 0)
    emcl_meta_mode<0>(p, pk, h, a, g, lam, decay, one_minus_decay, r, alpha0, eps, n);
  else if (lr_mode == 1)
    emcl_meta_mode<1>(p, pk, h, a, g, lam, decay, one_minus_decay, r, alpha0, eps, n);
  else
    emcl_meta_mode<2>(p, pk, h, a, g, lam, decay, one_minus_decay, r, alpha0, eps, n);
}

template <typename T>
void shift_loop(T* phi, T* thetas, int64_t num_learners, int64_t stride, T meta_lr, bool shift,
                int64_t n) {
  T acc[kShiftBlock];
  const T count = T(num_learners);
  for (int64_t j0 = 0; j0 < n; j0 += kShiftBlock) {
    const int64_t len = n - j0 < kShiftBlock ? n - j0 : kShiftBlock;
    const T* t0 = thetas + j0;
    for (int64_t j = 0; j < len; ++j) acc[j] = t0[j];
    for (int64_t t = 1; t < num_learners; ++t) {
      const T* tt = thetas + t * stride + j0;
      for (int64_t j = 0; j < len; ++j) acc[j] += tt[j];
    }
    T* ph = phi + j0;
    for (int64_t j = 0; j < len; ++j) {
      const T d = k::shift_delta(acc[j] / count, ph[j], meta_lr);
      acc[j] = d;
      ph[j] += d;
    }
    if (shift) {
      for (int64_t t = 0; t < num_learners; ++t) {
        T* tt = thetas + t * stride + j0;
        for (int64_t j = 0; j < len; ++j) tt[j] += acc[j];
      }
    }
  }
}

// ---- the loops of mlp_prox_steps_
template <typename T>
void prox_setup_loop(T* p, const T* a, const T* h, T* inv, T prox, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    inv[i] = T(1) / (prox * h[i] + T(1));
    p[i] -= a[i];
  }
}

template <typename T>
void add_loop(T* p, const T* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] += a[i];
}

template <typename T>
T row_dot(const T* q, const T* a, const T* x, int64_t n) {
  T acc = 0;
  if (a) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += (q[i] + a[i]) * x[i];
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += q[i] * x[i];
  }
  return acc;
}

// Four vectors at a time: four independent sums, each row element loaded once for the four.
template <typename T>
void rows_dot(const T* w, const T* x, int64_t x_stride, int64_t m, T* out, int64_t out_stride,
              int64_t n) {
  int64_t s = 0;
  for (; s + 4 <= m; s += 4) {
    const T* x0 = x + s * x_stride;
    const T *x1 = x0 + x_stride, *x2 = x1 + x_stride, *x3 = x2 + x_stride;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t i = 0; i < n; ++i) {
      a0 += w[i] * x0[i];
      a1 += w[i] * x1[i];
      a2 += w[i] * x2[i];
      a3 += w[i] * x3[i];
    }
    out[s * out_stride] = a0;
    out[(s + 1) * out_stride] = a1;
    out[(s + 2) * out_stride] = a2;
    out[(s + 3) * out_stride] = a3;
  }
  for (; s < m; ++s) out[s * out_stride] = row_dot<T>(w, nullptr, x + s * x_stride, n);
}

template <typename T>
T row_step_dot(T* q, const T* inv, const T* act, T scale, const T* next, int64_t n) {
  T acc = 0;
  if (inv && next) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const T v = (q[i] + scale * act[i]) * inv[i];
      q[i] = v;
      acc += v * next[i];
    }
  } else if (inv) {
    for (int64_t i = 0; i < n; ++i) q[i] = (q[i] + scale * act[i]) * inv[i];
  } else if (next) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const T v = q[i] + scale * act[i];
      q[i] = v;
      acc += v * next[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) q[i] += scale * act[i];
  }
  return acc;
}

template <typename T>
void row_back_step(T* q, const T* a, const T* inv, const T* act, T scale, T d, T* dprev, int64_t n) {
  if (a) {
    for (int64_t i = 0; i < n; ++i) {
      dprev[i] += d * (q[i] + a[i]);
      q[i] = (q[i] + scale * act[i]) * inv[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      dprev[i] += d * q[i];
      q[i] += scale * act[i];
    }
  }
}

// This ISA's dispatch table (Loops<T>, loops.cpp): every loop above, in FASTCL_CPU_LOOPS order.
#define FASTCL_LOOP_ENTRY(R, name, params, args) &name<T>,
template <typename T>
constexpr Loops<T> kLoops = {FASTCL_CPU_LOOPS(FASTCL_LOOP_ENTRY, T)};
#undef FASTCL_LOOP_ENTRY
