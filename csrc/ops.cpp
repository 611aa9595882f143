// The schema of every fastcl operator, in one place.
//
// Kernels are registered per dispatch key elsewhere: csrc/cpu/*.cpp (CPU) and
// csrc/cuda/glue.cpp (CUDA, only built against a CUDA build of torch). Fake (meta)
// kernels, vmap rules and autograd formulas are registered from Python, beside the
// public wrappers in fastcl/ops/.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <stdexcept>

#include "cpu/isa.h"
#include "cpu/memory_checks.h"

extern "C" {
// `import fastcl._C` runs the static initialisers below, which register the ops.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace fastcl {

static std::string cpu_isa() { return cpu::isa_name(); }
static std::vector<std::string> supported_cpu_isas() { return cpu::supported_isas(); }
static void set_cpu_isa(const std::string& name) {
  try {
    cpu::set_isa(name);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}
static bool cuda_built() {
#ifdef FASTCL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(fastcl, m) {
  // ---- parameter updates (lists: one call for every tensor of a model) ----
  // theta <- (theta - lr*g + prox*h*theta0) / (prox*h + 1)   EMCL Eq. 16, 17, 21.
  // anchors / importance may be None only when prox == 0 (plain SGD).
  m.def("prox_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor[]? anchors, Tensor[]? importance, "
        "float lr, float prox) -> ()");
  // Out-of-place, differentiable form (autograd registered in fastcl/ops/_prox.py).
  m.def("prox_sgd(Tensor[] params, Tensor[] grads, Tensor[]? anchors, Tensor[]? importance, "
        "float lr, float prox) -> Tensor[]");
  // h <- decay*h + (1-decay)*|g*theta|   EMCL Eq. 7, 13.
  m.def("taylor_importance_(Tensor(a!)[] importance, Tensor[] grads, Tensor[] params, "
        "float decay) -> ()");
  // EMCL meta update (Eq. 10) with importance-modulated meta learning rates (Eq. 8),
  // importance refresh (Eq. 7, 13) in the same pass. lr_mode: 0 = paper, 1 = stabilised,
  // 2 = inverse.
  m.def("emcl_meta_step_(Tensor(a!)[] params, Tensor[] fast_params, Tensor(b!)[] importance, "
        "Tensor(c!)[] meta_lrs, Tensor[] grads, float lam, float decay, float r, int lr_mode, "
        "float alpha0, float eps) -> ()");
  // k = x.size(0) sequential single-example steps of a ReLU MLP on cross-entropy, each the
  // prox_sgd_ step above with the gradient of one example: the EMCL inner loop (Algorithm 1,
  // Eq. 16, 21). params = [W_1, b_1, ..., W_L, b_L]; y: [k] int64 labels.
  m.def("mlp_prox_steps_(Tensor(a!)[] params, Tensor x, Tensor y, Tensor[]? anchors, "
        "Tensor[]? importance, float lr, float prox) -> ()");
  // delta = meta_lr*(mean_T thetas - phi); phi += delta; thetas[t] += delta if shift.
  // CTS Algorithm 2 lines 11-13; shift=False is Reptile Algorithm 1 line 12.
  m.def("trajectory_shift_(Tensor(a!)[] phi, Tensor(b!)[] thetas, float meta_lr, bool shift) -> ()");

  // ---- episodic memory ----
  // Insert a batch into per-(task, class) FIFO rings; equal to inserting one by one.
  // data: [num_tasks*num_classes*m, *feat]; counts: [num_tasks, num_classes] int64 (ever inserted).
  m.def("ring_insert_(Tensor(a!) data, Tensor(b!) counts, Tensor x, Tensor y, int task) -> ()");
  // n slot indices drawn uniformly (with replacement) from the filled slots of `tasks`.
  m.def("ring_sample(Tensor counts, int m, int[] tasks, int n, Generator? generator=None) -> Tensor");
  // ring_sample and the gather of what it drew, in one call: (rows, labels, task ids, indices).
  m.def("ring_sample_rows(Tensor data, Tensor counts, int[] tasks, int n, Generator? generator=None) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // Algorithm R for a batch; returns the slot each example went to (-1: not kept).
  m.def("reservoir_insert_(Tensor(a!) data, Tensor(b!) labels, Tensor(c!) tasks, Tensor x, "
        "Tensor y, int task, int n_seen, Generator? generator=None) -> Tensor");

  // ---- build facts ----
  m.def("cpu_isa() -> str", &cpu_isa);
  // The vector ISAs the CPU kernels can run with here, widest first (csrc/cpu/isa.h), and the
  // switch among them ("auto": the widest); fastcl/ops/_load.py applies FASTCL_ISA with it.
  m.def("supported_cpu_isas() -> str[]", &supported_cpu_isas);
  m.def("set_cpu_isa(str name) -> ()", &set_cpu_isa);
  m.def("cuda_built() -> bool", &cuda_built);
}

// ring_sample_rows on any backend without a fused kernel of its own (CUDA): ring_sample, then
// the gathers. The CPU kernel (csrc/cpu/memory_ops.cpp) does it in one pass.
static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ring_sample_rows_composite(
    const at::Tensor& data, const at::Tensor& counts, at::IntArrayRef tasks, int64_t n,
    std::optional<at::Generator> generator) {
  check_counts(counts);
  const int64_t m = check_ring_rows(data, counts);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastcl::ring_sample", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, at::IntArrayRef, int64_t,
                                         std::optional<at::Generator>)>();
  at::Tensor index = op.call(counts, m, tasks, n, generator);
  return {data.index_select(0, index), at::remainder(at::floor_divide(index, m), counts.size(1)),
          at::floor_divide(index, m * counts.size(1)), index};
}

TORCH_LIBRARY_IMPL(fastcl, CompositeExplicitAutograd, m) {
  m.impl("ring_sample_rows", &ring_sample_rows_composite);
}

}  // namespace fastcl
