// CPU kernel of mlp_prox_steps_: the EMCL inner loop of a ReLU MLP (k sequential single-example
// gradient steps, each followed by the closed-form prox of Eq. 21) in one call, with no
// gradient tensor ever materialised. See fastcl/ops/reference.py for the specification.
//
// Each weight is held during the call as q = theta - theta0 (the anchors are fixed for the
// whole call), in which the prox step of csrc/kernels/math.h,
//   theta <- (theta - lr*g + c*theta0) / (c + 1),   c = prox*h,
// becomes q <- (q - lr*g) * inv with inv = 1/(c + 1) computed once per call: two streams of
// the parameter size per step (q, inv) instead of five (theta, g, theta0, h, and the gradient
// written by a matmul first). The first layer's gradient is the outer product d_1 x^T, applied
// row by row; the same sweep over a row takes the dot product with the next example, which is
// the next step's first-layer forward pass (W x = q x + theta0 x, the theta0 x of all k
// examples being computed up front). Deeper layers also need W^T d for the backward pass,
// read from the same sweep that updates them (before the update, as the gradient is taken at
// the start of the step). Without anchors (prox = 0) q is theta and inv is 1.
//
// No BLAS: every sum is one of the loops of loops.h, whose order is fixed by the shapes (and
// the vector ISA), and the threads split rows or column blocks whose sums stay within one
// thread, so the result is bitwise the same whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/list_ops.h"
#include "cpu/loops.h"
#include "cpu/op_checks.h"

namespace fastcl {
namespace cpu {
namespace {

using OptList = std::optional<at::TensorList>;

// Buffers reused across calls by one calling thread: a fresh parameter-sized tensor at every
// call would cost page faults comparable to the steps themselves.
template <typename T>
std::vector<T>& scratch() {
  thread_local std::vector<T> buf;
  return buf;
}

// Rows (of `cols` elements each) per parallel task: about kGrain elements.
inline int64_t rows_per_task(int64_t cols) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
}

template <typename T>
void run_steps(const std::vector<Staged>& p, const std::vector<Staged>* anchors,
               const std::vector<Staged>* importance, const at::Tensor& x, const int64_t* y,
               double lr_, double prox_) {
  const T lr = T(lr_), prox = T(prox_);
  const int64_t num_layers = static_cast<int64_t>(p.size() / 2);
  const int64_t k = x.size(0);
  std::vector<int64_t> n(num_layers + 1);  // widths n_0 .. n_L
  n[0] = p[0].work.size(1);
  for (int64_t l = 0; l < num_layers; ++l) n[l + 1] = p[2 * l].work.size(0);

  // Scratch layout: inv of every parameter (with anchors), then per layer l = 1..L its
  // pre-activation z_l and its delta d_l, then the first layer's q.x of the next example, then
  // (with anchors) theta0 x + theta0_b of the first layer for all k examples.
  std::vector<int64_t> numel, inv_off(p.size() + 1, 0), z_off(num_layers + 1, 0);
  for (size_t i = 0; i < p.size(); ++i) {
    numel.push_back(p[i].work.numel());
    inv_off[i + 1] = inv_off[i] + (anchors ? numel[i] : 0);
  }
  for (int64_t l = 0; l < num_layers; ++l) z_off[l + 1] = z_off[l] + n[l + 1];
  const int64_t z_base = inv_off.back(), d_base = z_base + z_off.back();
  const int64_t next_base = d_base + z_off.back(), ax_base = next_base + n[1];
  std::vector<T>& buf = scratch<T>();
  buf.resize(std::max<size_t>(buf.size(), size_t(ax_base + (anchors ? k * n[1] : 0))));
  T* inv = buf.data();
  auto z = [&](int64_t l) { return buf.data() + z_base + z_off[l - 1]; };  // l = 1..L
  auto d = [&](int64_t l) { return buf.data() + d_base + z_off[l - 1]; };
  T* next_dot = buf.data() + next_base;

  auto q = [&](int64_t i) { return ptr<T>(p[i]); };
  auto a = [&](int64_t i) { return anchors ? ptr<T>((*anchors)[i]) : nullptr; };
  auto iv = [&](int64_t i) { return anchors ? inv + inv_off[i] : nullptr; };

  const T* xs = x.data_ptr<T>();
  const int64_t n0 = n[0], n1 = n[1];
  const int64_t row_grain = rows_per_task(n0);
  // ax[s*n_1 + j]: theta0 x + theta0_b of the first layer for all k examples, one fixed-order
  // dot product each (no BLAS: its blocking, hence its rounding, depends on the thread count).
  T* ax = anchors ? buf.data() + ax_base : nullptr;
  if (anchors) {
    const T *aw = a(0), *ab = a(1);
    at::parallel_for(0, n1, rows_per_task(n0 * k), [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        rows_dot(aw + j * n0, xs, n0, k, ax + j, n1, n0);
        for (int64_t s = 0; s < k; ++s) ax[s * n1 + j] += ab[j];
      }
    });
    for_each_range(numel, kGrain, [&](size_t i, int64_t b, int64_t e) {
      prox_setup_loop(q(i) + b, a(i) + b, ptr<T>((*importance)[i]) + b, iv(i) + b, prox, e - b);
    });
  }
  // the first example's first-layer product q x_0
  at::parallel_for(0, n1, row_grain, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) next_dot[j] = row_dot(q(0) + j * n0, nullptr, xs, n0);
  });

  for (int64_t s = 0; s < k; ++s) {
    const T* xi = xs + s * n0;
    const T* xn = s + 1 < k ? xi + n0 : nullptr;
    // ---- forward: z_l, with the ReLU applied in place on every layer but the last
    {
      T* z1 = z(1);
      const T* qb = q(1);
      const T* axs = anchors ? ax + s * n1 : nullptr;
      for (int64_t j = 0; j < n1; ++j) z1[j] = next_dot[j] + qb[j] + (axs ? axs[j] : T(0));
    }
    for (int64_t l = 1; l <= num_layers; ++l) {
      T* zl = z(l);
      if (l > 1) {
        const int64_t in = n[l - 1], out = n[l];
        const T* prev = z(l - 1);
        const T* qw = q(2 * l - 2);
        const T* aw = a(2 * l - 2);
        const T* qb = q(2 * l - 1);
        const T* ab = a(2 * l - 1);
        at::parallel_for(0, out, rows_per_task(in), [&](int64_t b, int64_t e) {
          for (int64_t j = b; j < e; ++j)
            zl[j] = row_dot(qw + j * in, aw ? aw + j * in : nullptr, prev, in) + qb[j] +
                    (ab ? ab[j] : T(0));
        });
      }
      if (l < num_layers)  // as torch.relu: nan stays nan (the backward mask a > 0 drops it)
        for (int64_t j = 0; j < n[l]; ++j) zl[j] = zl[j] < T(0) ? T(0) : zl[j];
    }
    // ---- d_L = softmax(z_L) - onehot(y)
    {
      const int64_t c = n[num_layers];
      const T* zl = z(num_layers);
      T* dl = d(num_layers);
      T mx = zl[0];
      for (int64_t j = 1; j < c; ++j) mx = std::max(mx, zl[j]);
      T sum = 0;
      for (int64_t j = 0; j < c; ++j) sum += dl[j] = std::exp(zl[j] - mx);
      for (int64_t j = 0; j < c; ++j) dl[j] /= sum;
      dl[y[s]] -= T(1);
    }
    // ---- backward and update, last layer first: each sweep reads W_l (for d_(l-1)) before
    // writing it. Deeper layers run in column blocks, so d_(l-1) has no shared sums.
    for (int64_t l = num_layers; l >= 2; --l) {
      const int64_t in = n[l - 1], out = n[l];
      const T* act = z(l - 1);  // a_(l-1), after its ReLU
      const T* dl = d(l);
      T* dp = d(l - 1);
      T* qw = q(2 * l - 2);
      const T* aw = a(2 * l - 2);
      const T* invw = iv(2 * l - 2);
      std::fill(dp, dp + in, T(0));
      // columns per task: a block of every one of the `out` rows, about kGrain elements
      at::parallel_for(0, in, rows_per_task(out), [&](int64_t b, int64_t e) {
        for (int64_t j = 0; j < out; ++j) {
          const int64_t off = j * in + b;
          row_back_step(qw + off, aw ? aw + off : nullptr, invw ? invw + off : nullptr, act + b,
                        -lr * dl[j], dl[j], dp + b, e - b);
        }
      });
      for (int64_t c = 0; c < in; ++c) dp[c] = act[c] > T(0) ? dp[c] : T(0);
      row_step_dot(q(2 * l - 1), iv(2 * l - 1), dl, -lr, nullptr, out);  // bias: g = d_l
    }
    // first layer: q <- (q - lr*d_1 x^T) * inv, and q.x of the next example in the same sweep
    const T* d1 = d(1);
    T* qw = q(0);
    const T* invw = iv(0);
    at::parallel_for(0, n1, row_grain, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j)
        next_dot[j] = row_step_dot(qw + j * n0, invw ? invw + j * n0 : nullptr, xi, -lr * d1[j],
                                   xn, n0);
    });
    row_step_dot(q(1), iv(1), d1, -lr, nullptr, n1);
  }

  if (anchors) {
    for_each_range(numel, kGrain,
                   [&](size_t i, int64_t b, int64_t e) { add_loop(q(i) + b, a(i) + b, e - b); });
  }
}

void mlp_prox_steps_(at::TensorList params, const at::Tensor& x, const at::Tensor& y,
                     OptList anchors, OptList importance, double lr, double prox) {
  check_mlp_prox_steps_args(params, x, y, anchors, importance, lr, prox);
  const int64_t k = x.size(0);
  if (k == 0) return;
  const at::Tensor ys = y.contiguous();
  const int64_t* yp = ys.data_ptr<int64_t>();
  const auto [lo, hi] = std::minmax_element(yp, yp + k);
  check_label_range(*lo, *hi, params.back().size(0));
  // Inputs first, then the written params (checked disjoint from every input).
  const at::Tensor xs = x.reshape({k, -1}).contiguous();
  std::vector<Staged> a, h;
  if (anchors) {
    a = stage_all(*anchors);
    h = stage_all(*importance);
  }
  const auto p = stage_all(params);
  AT_DISPATCH_FLOATING_TYPES(p[0].work.scalar_type(), "mlp_prox_steps_", [&] {
    run_steps<scalar_t>(p, anchors ? &a : nullptr, anchors ? &h : nullptr, xs, yp, lr, prox);
  });
  unstage(p);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) { m.impl("mlp_prox_steps_", &mlp_prox_steps_); }

}  // namespace cpu
}  // namespace fastcl
