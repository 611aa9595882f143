// CPU kernels of the parameter-update ops: prox_sgd_ / prox_sgd, taylor_importance_,
// emcl_meta_step_, trajectory_shift_ (mlp_prox_steps_ is in mlp_ops.cpp; the autograd and
// version-counter kernels of every in-place op are in inplace_autograd.cpp). Every op checks
// all of its arguments first (a rejected call writes nothing), then runs one parallel loop over
// the elements of the whole list.
// float and double run the ISA-dispatched loops of loops.cpp; half and bfloat16 are stored
// as such and computed in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <type_traits>

#include "cpu/checks.h"
#include "cpu/op_checks.h"
#include "cpu/list_ops.h"
#include "cpu/loops.h"
#include "kernels/math.h"

namespace fastcl {
namespace cpu {
namespace {
namespace k = ::fastcl::kernels;

template <typename S>
constexpr bool kNative = std::is_same_v<S, float> || std::is_same_v<S, double>;

using OptList = std::optional<at::TensorList>;

using ::fastcl::cpu::emcl_meta_loop;
using ::fastcl::cpu::prox_sgd_loop;
using ::fastcl::cpu::sgd_loop;
using ::fastcl::cpu::shift_loop;
using ::fastcl::cpu::taylor_loop;

// half / bfloat16: the same loops with float math (overloads of the ISA-dispatched ones).
template <typename S, std::enable_if_t<!kNative<S>, int> = 0>
void sgd_loop(S* out, const S* p, const S* g, float lr, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = S(k::sgd<float>(float(p[j]), float(g[j]), lr));
}
template <typename S, std::enable_if_t<!kNative<S>, int> = 0>
void prox_sgd_loop(S* out, const S* p, const S* g, const S* a, const S* h, float lr, float prox,
                   int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    out[j] = S(k::prox_sgd<float>(float(p[j]), float(g[j]), float(a[j]), float(h[j]), lr, prox));
}
template <typename S, std::enable_if_t<!kNative<S>, int> = 0>
void taylor_loop(S* h, const S* g, const S* p, float d, float omd, int64_t n) {
  for (int64_t j = 0; j < n; ++j) h[j] = S(k::taylor<float>(float(h[j]), float(g[j]), float(p[j]), d, omd));
}
template <typename S, std::enable_if_t<!kNative<S>, int> = 0>
void emcl_meta_loop(S* p, const S* pk, S* h, S* a, const S* g, float lam, float d, float omd,
                    float r, int mode, float a0, float eps, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float pv = float(p[j]), hv = float(h[j]), av = float(a[j]);
    k::emcl_meta<float>(pv, float(pk[j]), hv, av, float(g[j]), lam, d, omd, r, mode, a0, eps);
    p[j] = S(pv);
    h[j] = S(hv);
    a[j] = S(av);
  }
}
template <typename S, std::enable_if_t<!kNative<S>, int> = 0>
void shift_loop(S* ph, S* tt, int64_t num, int64_t stride, float lr, bool shift, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float acc = 0;
    for (int64_t t = 0; t < num; ++t) acc += float(tt[t * stride + j]);
    const float d = k::shift_delta<float>(acc / float(num), float(ph[j]), lr);
    ph[j] = S(float(ph[j]) + d);
    if (shift)
      for (int64_t t = 0; t < num; ++t) tt[t * stride + j] = S(float(tt[t * stride + j]) + d);
  }
}

// out[i] <- prox step of (params, grads, anchors, importance); out may be params (in place).
void prox_sgd_into(const std::vector<Staged>& out, const std::vector<Staged>& p,
                   const std::vector<Staged>& g, const std::vector<Staged>* a,
                   const std::vector<Staged>* h, double lr, double prox) {
  if (out.empty()) return;
  std::vector<int64_t> numel;
  for (const auto& s : out) numel.push_back(s.work.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out[0].work.scalar_type(),
                                  "prox_sgd", [&] {
    using M = at::opmath_type<scalar_t>;
    const M lr_ = static_cast<M>(lr), prox_ = static_cast<M>(prox);
    for_each_range(numel, kGrain, [&](size_t i, int64_t b, int64_t e) {
      scalar_t* o = ptr<scalar_t>(out[i]) + b;
      const scalar_t* pp = ptr<scalar_t>(p[i]) + b;
      const scalar_t* gg = ptr<scalar_t>(g[i]) + b;
      const int64_t n = e - b;
      if (a) {
        const scalar_t* aa = ptr<scalar_t>((*a)[i]) + b;
        const scalar_t* hh = ptr<scalar_t>((*h)[i]) + b;
        prox_sgd_loop(o, pp, gg, aa, hh, lr_, prox_, n);
      } else {
        sgd_loop(o, pp, gg, lr_, n);
      }
    });
  });
}

void prox_sgd_(at::TensorList params, at::TensorList grads, OptList anchors, OptList importance,
               double lr, double prox) {
  check_prox_sgd_args(params, grads, anchors, importance, lr, prox, /*in_place=*/true);
  // Stage the inputs before the outputs: a strided param that is also its own grad is read
  // from its copy, never from half-written memory.
  const auto g = stage_all(grads);
  std::vector<Staged> a, h;
  if (anchors) {
    a = stage_all(*anchors);
    h = stage_all(*importance);
  }
  const auto p = stage_all(params);
  prox_sgd_into(p, p, g, anchors ? &a : nullptr, anchors ? &h : nullptr, lr, prox);
  unstage(p);
}

std::vector<at::Tensor> prox_sgd(at::TensorList params, at::TensorList grads, OptList anchors,
                                 OptList importance, double lr, double prox) {
  check_prox_sgd_args(params, grads, anchors, importance, lr, prox, /*in_place=*/false);
  const auto p = stage_all(params);
  const auto g = stage_all(grads);
  std::vector<Staged> a, h, out;
  if (anchors) {
    a = stage_all(*anchors);
    h = stage_all(*importance);
  }
  std::vector<at::Tensor> result;
  for (const auto& s : p) {
    result.push_back(at::empty_like(s.work, at::MemoryFormat::Contiguous));
    out.push_back(Staged{result.back(), result.back()});
  }
  prox_sgd_into(out, p, g, anchors ? &a : nullptr, anchors ? &h : nullptr, lr, prox);
  return result;
}

void taylor_importance_(at::TensorList importance, at::TensorList grads, at::TensorList params,
                        double decay) {
  check_taylor_importance_args(importance, grads, params, decay);
  if (importance.empty()) return;
  const auto g = stage_all(grads);
  const auto p = stage_all(params);
  const auto h = stage_all(importance);
  std::vector<int64_t> numel;
  for (const auto& s : h) numel.push_back(s.work.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h[0].work.scalar_type(),
                                  "taylor_importance_", [&] {
    using M = at::opmath_type<scalar_t>;
    const M d = static_cast<M>(decay), omd = static_cast<M>(1.0 - decay);
    for_each_range(numel, kGrain, [&](size_t i, int64_t b, int64_t e) {
      scalar_t* hh = ptr<scalar_t>(h[i]) + b;
      const scalar_t* gg = ptr<scalar_t>(g[i]) + b;
      const scalar_t* pp = ptr<scalar_t>(p[i]) + b;
      taylor_loop(hh, gg, pp, d, omd, e - b);
    });
  });
  unstage(h);
}

void emcl_meta_step_(at::TensorList params, at::TensorList fast_params, at::TensorList importance,
                     at::TensorList meta_lrs, at::TensorList grads, double lam, double decay,
                     double r, int64_t lr_mode, double alpha0, double eps) {
  check_emcl_meta_step_args(params, fast_params, importance, meta_lrs, grads, lam, decay, r,
                            lr_mode, alpha0, eps);
  if (params.empty()) return;
  const auto pk = stage_all(fast_params);
  const auto g = stage_all(grads);
  const auto p = stage_all(params);
  const auto h = stage_all(importance);
  const auto a = stage_all(meta_lrs);
  std::vector<int64_t> numel;
  for (const auto& s : p) numel.push_back(s.work.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p[0].work.scalar_type(),
                                  "emcl_meta_step_", [&] {
    using M = at::opmath_type<scalar_t>;
    const M lam_ = M(lam), d = M(decay), omd = M(1.0 - decay), r_ = M(r), a0 = M(alpha0),
            eps_ = M(eps);
    const int mode = static_cast<int>(lr_mode);
    for_each_range(numel, kGrain, [&](size_t i, int64_t b, int64_t e) {
      scalar_t* pp = ptr<scalar_t>(p[i]) + b;
      const scalar_t* kk = ptr<scalar_t>(pk[i]) + b;
      scalar_t* hh = ptr<scalar_t>(h[i]) + b;
      scalar_t* aa = ptr<scalar_t>(a[i]) + b;
      const scalar_t* gg = ptr<scalar_t>(g[i]) + b;
      emcl_meta_loop(pp, kk, hh, aa, gg, lam_, d, omd, r_, mode, a0, eps_, e - b);
    });
  });
  unstage(p);
  unstage(h);
  unstage(a);
}

void trajectory_shift_(at::TensorList phi, at::TensorList thetas, double meta_lr, bool shift) {
  const int64_t max_t = check_trajectory_shift_args(phi, thetas, meta_lr, shift);
  if (phi.empty()) return;
  const auto p = stage_all(phi);
  const auto th = stage_all(thetas);
  std::vector<int64_t> numel;
  for (const auto& s : p) numel.push_back(s.work.numel());
  const int64_t grain = std::max<int64_t>(256, kGrain / (2 * max_t + 2));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p[0].work.scalar_type(),
                                  "trajectory_shift_", [&] {
    using M = at::opmath_type<scalar_t>;
    const M lr = M(meta_lr);
    for_each_range(numel, grain, [&](size_t i, int64_t b, int64_t e) {
      const int64_t stride = numel[i];
      const int64_t num = th[i].work.size(0);
      scalar_t* ph = ptr<scalar_t>(p[i]) + b;
      scalar_t* tt = ptr<scalar_t>(th[i]) + b;
      shift_loop(ph, tt, num, stride, lr, shift, e - b);
    });
  });
  unstage(p);
  if (shift) unstage(th);  // shift=False only reads thetas: never write them back
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) {
  m.impl("prox_sgd_", &prox_sgd_);
  m.impl("prox_sgd", &prox_sgd);
  m.impl("taylor_importance_", &taylor_importance_);
  m.impl("emcl_meta_step_", &emcl_meta_step_);
  m.impl("trajectory_shift_", &trajectory_shift_);
}

}  // namespace cpu
}  // namespace fastcl
