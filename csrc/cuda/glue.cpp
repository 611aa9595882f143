// Torch glue of the CUDA kernels: registers all fastcl ops for the CUDA dispatch key.
//
// Built only against a CUDA build of torch (setup.py defines FASTCL_WITH_CUDA and adds this file
// and csrc/cuda/*.cu). Each op runs the argument checks of its CPU version (csrc/cpu/checks.h;
// a rejected call writes nothing), stages strided tensors into contiguous ones like the CPU
// kernels (csrc/cpu/list_ops.h), sets the tensors' device with a CUDAGuard, and enqueues the
// raw-pointer launchers of csrc/cuda/launch.h on the current CUDA stream.
//
// Only the c10/cuda headers are used (stream, guard, error check): they need nothing but the
// CUDA runtime headers, unlike ATen/cuda/CUDAContext.h (cuBLAS, cuSPARSE, ...).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/checks.h"
#include "cpu/list_ops.h"
#include "cpu/memory_checks.h"
#include "cpu/op_checks.h"
#include "cuda/launch.h"

namespace fastcl {
namespace cuda_glue {
namespace {

namespace launch = ::fastcl::cuda;
using ::fastcl::cpu::stage;
using ::fastcl::cpu::stage_all;
using ::fastcl::cpu::Staged;
using ::fastcl::cpu::unstage;
using OptList = std::optional<at::TensorList>;

launch::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return launch::DType::kFloat32;
    case at::kDouble:
      return launch::DType::kFloat64;
    case at::kHalf:
      return launch::DType::kFloat16;
    case at::kBFloat16:
      return launch::DType::kBFloat16;
    default:
      break;
  }
  TORCH_CHECK_TYPE(false, "fastcl CUDA kernels take float32, float64, float16 or bfloat16, got ",
                   t);
  return launch::DType::kFloat32;  // unreachable
}

// The device of `t` made current for the lifetime of this object, and its current stream.
struct OnDevice {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit OnDevice(const at::Tensor& t)
      : guard(t.device()), stream(c10::cuda::getCurrentCUDAStream().stream()) {}
};

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " is on ", t.device(), "; expected a CUDA tensor");
}

std::vector<void*> ptrs(const std::vector<Staged>& s) {
  std::vector<void*> out;
  out.reserve(s.size());
  for (const auto& x : s) out.push_back(x.work.data_ptr());
  return out;
}

std::vector<int64_t> numels(const std::vector<Staged>& s) {
  std::vector<int64_t> out;
  out.reserve(s.size());
  for (const auto& x : s) out.push_back(x.work.numel());
  return out;
}

int64_t row_bytes_of(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n * static_cast<int64_t>(t.element_size());
}

// ------------------------------------------------------------------ parameter updates

// out[i] <- prox step of (p, g, a, h); a == h == nullptr: SGD. out may be p (in place).
void launch_prox(const std::vector<Staged>& out, const std::vector<Staged>& p,
                 const std::vector<Staged>& g, const std::vector<Staged>* a,
                 const std::vector<Staged>* h, double lr, double prox, cudaStream_t stream) {
  const auto n = numels(out);
  const auto o = ptrs(out), pp = ptrs(p), gg = ptrs(g);
  std::vector<void*> aa, hh;
  if (a) {
    aa = ptrs(*a);
    hh = ptrs(*h);
  }
  C10_CUDA_CHECK(launch::prox_sgd(dtype_of(out[0].work.scalar_type()),
                                  static_cast<int64_t>(n.size()), n.data(), o.data(), pp.data(),
                                  gg.data(), a ? aa.data() : nullptr, a ? hh.data() : nullptr,
                                  lr, prox, stream));
}

void prox_sgd_(at::TensorList params, at::TensorList grads, OptList anchors, OptList importance,
               double lr, double prox) {
  check_prox_sgd_args(params, grads, anchors, importance, lr, prox, /*in_place=*/true);
  if (params.empty()) return;
  check_cuda(params[0], "params[0]");
  const OnDevice on(params[0]);
  // Inputs are staged before the outputs, as on the CPU (a strided param that is its own grad
  // is read from its copy).
  const auto g = stage_all(grads);
  std::vector<Staged> a, h;
  if (anchors) {
    a = stage_all(*anchors);
    h = stage_all(*importance);
  }
  const auto p = stage_all(params);
  launch_prox(p, p, g, anchors ? &a : nullptr, anchors ? &h : nullptr, lr, prox, on.stream);
  unstage(p);
}

std::vector<at::Tensor> prox_sgd(at::TensorList params, at::TensorList grads, OptList anchors,
                                 OptList importance, double lr, double prox) {
  check_prox_sgd_args(params, grads, anchors, importance, lr, prox, /*in_place=*/false);
  std::vector<at::Tensor> result;
  if (params.empty()) return result;
  check_cuda(params[0], "params[0]");
  const OnDevice on(params[0]);
  const auto p = stage_all(params);
  const auto g = stage_all(grads);
  std::vector<Staged> a, h, out;
  if (anchors) {
    a = stage_all(*anchors);
    h = stage_all(*importance);
  }
  for (const auto& s : p) {
    result.push_back(at::empty_like(s.work, at::MemoryFormat::Contiguous));
    out.push_back(Staged{result.back(), result.back()});
  }
  launch_prox(out, p, g, anchors ? &a : nullptr, anchors ? &h : nullptr, lr, prox, on.stream);
  return result;
}

void taylor_importance_(at::TensorList importance, at::TensorList grads, at::TensorList params,
                        double decay) {
  check_taylor_importance_args(importance, grads, params, decay);
  if (importance.empty()) return;
  check_cuda(importance[0], "importance[0]");
  const OnDevice on(importance[0]);
  const auto g = stage_all(grads);
  const auto p = stage_all(params);
  const auto h = stage_all(importance);
  const auto n = numels(h);
  const auto hh = ptrs(h), gg = ptrs(g), pp = ptrs(p);
  C10_CUDA_CHECK(launch::taylor_importance(dtype_of(h[0].work.scalar_type()),
                                           static_cast<int64_t>(n.size()), n.data(), hh.data(),
                                           gg.data(), pp.data(), decay, on.stream));
  unstage(h);
}

void emcl_meta_step_(at::TensorList params, at::TensorList fast_params, at::TensorList importance,
                     at::TensorList meta_lrs, at::TensorList grads, double lam, double decay,
                     double r, int64_t lr_mode, double alpha0, double eps) {
  check_emcl_meta_step_args(params, fast_params, importance, meta_lrs, grads, lam, decay, r,
                            lr_mode, alpha0, eps);
  if (params.empty()) return;
  check_cuda(params[0], "params[0]");
  const OnDevice on(params[0]);
  const auto pk = stage_all(fast_params);
  const auto g = stage_all(grads);
  const auto p = stage_all(params);
  const auto h = stage_all(importance);
  const auto a = stage_all(meta_lrs);
  const auto n = numels(p);
  const auto pp = ptrs(p), kk = ptrs(pk), hh = ptrs(h), aa = ptrs(a), gg = ptrs(g);
  C10_CUDA_CHECK(launch::emcl_meta_step(dtype_of(p[0].work.scalar_type()),
                                        static_cast<int64_t>(n.size()), n.data(), pp.data(),
                                        kk.data(), hh.data(), aa.data(), gg.data(), lam, decay, r,
                                        static_cast<int>(lr_mode), alpha0, eps, on.stream));
  unstage(p);
  unstage(h);
  unstage(a);
}

void trajectory_shift_(at::TensorList phi, at::TensorList thetas, double meta_lr, bool shift) {
  check_trajectory_shift_args(phi, thetas, meta_lr, shift);
  if (phi.empty()) return;
  check_cuda(phi[0], "phi[0]");
  const OnDevice on(phi[0]);
  const auto p = stage_all(phi);
  const auto th = stage_all(thetas);
  const auto n = numels(p);
  std::vector<int64_t> learners;
  learners.reserve(th.size());
  for (const auto& s : th) learners.push_back(s.work.size(0));
  const auto pp = ptrs(p), tt = ptrs(th);
  C10_CUDA_CHECK(launch::trajectory_shift(dtype_of(p[0].work.scalar_type()),
                                          static_cast<int64_t>(n.size()), n.data(),
                                          learners.data(), pp.data(), tt.data(), meta_lr, shift,
                                          on.stream));
  unstage(p);
  if (shift) unstage(th);  // shift=false reads thetas only (they may be stride-0 views)
}

// k sequential single-example steps of a ReLU MLP (csrc/cuda/mlp_ops.cu). The label range is
// read on the host in one synchronisation, as the reference reads it, so that a rejected call
// writes nothing.
void mlp_prox_steps_(at::TensorList params, const at::Tensor& x, const at::Tensor& y,
                     OptList anchors, OptList importance, double lr, double prox) {
  const int64_t L = check_mlp_prox_steps_args(params, x, y, anchors, importance, lr, prox);
  check_cuda(params[0], "params[0]");
  const OnDevice on(params[0]);
  const int64_t k = x.size(0);
  if (k == 0) return;
  {
    const auto mm = at::aminmax(y);
    const at::Tensor s = at::stack({std::get<0>(mm), std::get<1>(mm)}).cpu();
    const int64_t* sp = s.const_data_ptr<int64_t>();
    check_label_range(sp[0], sp[1], params.back().size(0));
  }
  // widths n_0 .. n_L and the workspace of the launcher: 2*(n_1 + ... + n_L) elements
  std::vector<int64_t> widths{params[0].size(1)};
  int64_t units = 0;
  for (int64_t l = 0; l < L; ++l) {
    widths.push_back(params[2 * l].size(0));
    units += widths.back();
  }
  // Inputs are staged before the written params (checked disjoint from every input).
  const at::Tensor xc = x.contiguous();
  const at::Tensor yc = y.contiguous();
  std::vector<Staged> a, h;
  if (anchors) {
    a = stage_all(*anchors);
    h = stage_all(*importance);
  }
  const auto p = stage_all(params);
  const at::Tensor workspace = at::empty({2 * units}, xc.options());
  const auto pp = ptrs(p);
  std::vector<void*> aa, hh;
  if (anchors) {
    aa = ptrs(a);
    hh = ptrs(h);
  }
  C10_CUDA_CHECK(launch::mlp_prox_steps(
      dtype_of(p[0].work.scalar_type()), L, widths.data(), pp.data(), xc.data_ptr(),
      yc.data_ptr<int64_t>(), k, anchors ? aa.data() : nullptr, anchors ? hh.data() : nullptr, lr,
      prox, workspace.data_ptr(), on.stream));
  unstage(p);
}

// ------------------------------------------------------------------ episodic memory
// The argument checks are those of the CPU kernels (csrc/cpu/memory_checks.h). Rows are copied
// as raw bytes, so every dtype of `data` works.


void ring_insert_(const at::Tensor& data, const at::Tensor& counts, const at::Tensor& x,
                  const at::Tensor& y, int64_t task) {
  const RingLayout L = check_ring_insert_args(data, counts, x, y, task);
  const int64_t num_classes = L.num_classes, m = L.m, b = L.b;
  check_cuda(data, "data");
  const OnDevice on(data);
  // Label range and counts >= 0, read on the host in one synchronisation (the reference
  // reads them too): a rejected call writes nothing.
  {
    std::vector<at::Tensor> stats;
    if (b > 0) {
      stats.push_back(y.min());
      stats.push_back(y.max());
    }
    stats.push_back(counts.min());
    const at::Tensor s = at::stack(stats).cpu();
    const int64_t* sp = s.const_data_ptr<int64_t>();
    if (b > 0) {
      TORCH_CHECK_VALUE(sp[0] >= 0 && sp[1] < num_classes, "y must hold labels in [0, ",
                        num_classes, "), got values in [", sp[0], ", ", sp[1], "]");
    }
    TORCH_CHECK_VALUE(sp[b > 0 ? 2 : 0] >= 0,
                      "counts must be >= 0 (examples inserted per ring), got a minimum of ",
                      sp[b > 0 ? 2 : 0]);
  }
  if (b == 0) return;
  const at::Tensor xc = source_rows(x);
  const at::Tensor yc = y.contiguous();
  const std::vector<Staged> out{stage(data), stage(counts)};
  const at::Tensor workspace = at::empty({2 * b}, yc.options());
  C10_CUDA_CHECK(launch::ring_insert(out[0].work.data_ptr(), out[1].work.data_ptr<int64_t>(),
                                     num_classes, m, xc.data_ptr(), yc.data_ptr<int64_t>(), b,
                                     row_bytes_of(xc), task, workspace.data_ptr<int64_t>(),
                                     on.stream));
  unstage(out);
}

// No host synchronisation: an empty task list is rejected here, but a selection whose rings are
// all empty (or negative counts, which the CPU op rejects) cannot be seen without reading
// counts; the kernel then returns -1 for every draw (negative counts count as empty rings).
// The memory classes check emptiness with their host-side counters before sampling.
at::Tensor ring_sample(const at::Tensor& counts, int64_t m, at::IntArrayRef tasks, int64_t n,
                       std::optional<at::Generator> generator) {
  check_counts(counts);
  TORCH_CHECK_VALUE(m >= 1, "m must be an int >= 1, got ", m);
  TORCH_CHECK_VALUE(n >= 0, "n must be an int >= 0, got ", n);
  const int64_t num_tasks = counts.size(0), num_classes = counts.size(1);
  for (const int64_t t : tasks)
    TORCH_CHECK_VALUE(t >= 0 && t < num_tasks, "tasks must hold task ids in [0, ", num_tasks,
                      "), got ", t);
  TORCH_CHECK_VALUE(!tasks.empty() && num_classes > 0, "cannot sample: tasks ", tasks,
                    " hold no examples");
  check_cuda(counts, "counts");
  const OnDevice on(counts);
  const at::Tensor cc = counts.contiguous();
  // The selected tasks as a byte mask, copied from pinned memory without a synchronisation.
  at::Tensor mask_host =
      at::zeros({num_tasks}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* mp = mask_host.data_ptr<uint8_t>();
  for (const int64_t t : tasks) mp[t] = 1;
  const at::Tensor mask = mask_host.to(counts.device(), at::kByte, /*non_blocking=*/true);
  const at::Tensor u = at::rand({n}, generator, cc.options().dtype(at::kDouble));
  at::Tensor out = at::empty({n}, cc.options());
  if (n == 0) return out;
  const at::Tensor ends = at::empty({num_tasks * num_classes}, cc.options());
  C10_CUDA_CHECK(launch::ring_sample(cc.data_ptr<int64_t>(), mask.data_ptr<uint8_t>(), num_tasks,
                                     num_classes, m, u.data_ptr<double>(), n,
                                     out.data_ptr<int64_t>(), ends.data_ptr<int64_t>(),
                                     on.stream));
  return out;
}

at::Tensor reservoir_insert_(const at::Tensor& data, const at::Tensor& labels,
                             const at::Tensor& tasks, const at::Tensor& x, const at::Tensor& y,
                             int64_t task, int64_t n_seen, std::optional<at::Generator> generator) {
  const int64_t cap = check_reservoir_insert_args(data, labels, tasks, x, y, task, n_seen);
  const int64_t b = x.size(0);
  check_cuda(data, "data");
  const OnDevice on(data);
  // The reference's B uniforms, drawn even when every example is kept.
  const at::Tensor u = at::rand({b}, generator, data.options().dtype(at::kDouble));
  at::Tensor slots = at::empty({b}, data.options().dtype(at::kLong));
  if (b == 0) return slots;
  const at::Tensor xc = source_rows(x);
  const at::Tensor yc = y.contiguous();  // disjoint from labels and tasks (checked)
  const std::vector<Staged> out{stage(data), stage(labels), stage(tasks)};
  const at::Tensor workspace = at::empty({cap}, slots.options());
  C10_CUDA_CHECK(launch::reservoir_insert(
      out[0].work.data_ptr(), out[1].work.data_ptr<int64_t>(), out[2].work.data_ptr<int64_t>(),
      cap, xc.data_ptr(), yc.data_ptr<int64_t>(), b, row_bytes_of(xc), task, n_seen,
      u.data_ptr<double>(), slots.data_ptr<int64_t>(), workspace.data_ptr<int64_t>(),
      on.stream));
  unstage(out);
  return slots;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CUDA, m) {
  m.impl("prox_sgd_", &prox_sgd_);
  m.impl("prox_sgd", &prox_sgd);
  m.impl("taylor_importance_", &taylor_importance_);
  m.impl("emcl_meta_step_", &emcl_meta_step_);
  m.impl("trajectory_shift_", &trajectory_shift_);
  m.impl("mlp_prox_steps_", &mlp_prox_steps_);
  m.impl("ring_insert_", &ring_insert_);
  m.impl("ring_sample", &ring_sample);
  m.impl("reservoir_insert_", &reservoir_insert_);
}

}  // namespace cuda_glue
}  // namespace fastcl
