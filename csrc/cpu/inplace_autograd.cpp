// The autograd contract of every in-place fastcl op, on every device: two boxed kernels driven
// by the op's schema (its Tensor(a!) / Tensor(a!)[] arguments are the tensors it writes). This
// file is built for every backend (CPU and CUDA builds alike).
//
// * Autograd: the in-place ops are not differentiable. With grad mode on, a written tensor that
//   requires grad (a leaf, or a non-leaf inside an autograd graph) is refused with a ValueError
//   naming it, before anything runs: autograd would never learn of the update, and a later
//   backward would silently differentiate the old values. (PyTorch's own in-place ops raise for
//   a leaf and record the update for a non-leaf; these ops cannot record it, so they raise for
//   both.) Under torch.no_grad() the call proceeds, as PyTorch's in-place ops do (an optimizer
//   step on leaf parameters). Tensors that are only read may require grad: the ops store values,
//   and nothing is meant to flow back to them.
// * ADInplaceOrView: an op registered from C++ has no kernel for this key unless it is given one,
//   and then nothing bumps the version counters of the tensors it writes: autograd could not tell
//   that a tensor saved for backward was modified. This kernel bumps them after the op ran (a
//   rejected call changes nothing, versions included), as PyTorch's generated in-place kernels do.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace fastcl {
namespace {

// Every op of csrc/ops.cpp that writes one of its arguments.
constexpr const char* kInPlaceOps[] = {"prox_sgd_",        "taylor_importance_", "emcl_meta_step_",
                                       "trajectory_shift_", "mlp_prox_steps_",    "ring_insert_",
                                       "reservoir_insert_"};

struct WrittenArg {
  std::string name;
  bool list;
  std::vector<at::Tensor> tensors;
  // "params[2]" for a list argument, "data" for a tensor argument (as the error messages say).
  std::string label(size_t i) const { return list ? name + "[" + std::to_string(i) + "]" : name; }
};

// The tensors one call writes: its Tensor(a!) arguments, except the thetas of trajectory_shift_
// with shift=False (it only reads them then).
std::vector<WrittenArg> written_args(const c10::OperatorHandle& op, const torch::jit::Stack& stack) {
  const c10::FunctionSchema& schema = op.schema();
  const auto& args = schema.arguments();
  const size_t base = stack.size() - args.size();
  std::vector<WrittenArg> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!schema.is_mutable({c10::SchemaArgType::input, i})) continue;
    if (schema.name() == "fastcl::trajectory_shift_" && args[i].name() == "thetas" &&
        !stack[base + *schema.argumentIndexWithName("shift")].toBool())
      continue;
    const c10::IValue& v = stack[base + i];
    WrittenArg w{args[i].name(), v.isTensorList(), {}};
    if (v.isTensor()) {
      w.tensors.push_back(v.toTensor());
    } else if (v.isTensorList()) {
      w.tensors = v.toTensorVector();
    }
    out.push_back(std::move(w));
  }
  return out;
}

// Autograd: refuses what PyTorch's in-place ops refuse, before anything runs. Inference tensors
// carry the Autograd key too (not the ADInplaceOrView one), so their check is here as well.
void check_written(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                   torch::jit::Stack* stack) {
  const bool grad = at::GradMode::is_enabled();
  const bool inference = c10::InferenceMode::is_enabled();
  for (const auto& w : written_args(op, *stack)) {
    for (size_t i = 0; i < w.tensors.size(); ++i) {
      const at::Tensor& t = w.tensors[i];
      if (!t.defined()) continue;
      TORCH_CHECK_VALUE(!(grad && t.requires_grad()), w.label(i), " requires grad: ",
                        op.schema().name(),
                        " writes it in place and is not differentiable, so gradients through it "
                        "would be silently wrong; call the op under torch.no_grad(), or pass a "
                        "tensor that does not require grad");
      // bump_version() would raise for it once the kernel has written it
      TORCH_CHECK_VALUE(inference || t.unsafeGetTensorImpl()->version_counter().enabled(),
                        w.label(i),
                        " is an inference tensor: an inplace update to an inference tensor "
                        "outside InferenceMode is not allowed (clone it outside InferenceMode "
                        "first)");
    }
  }
  at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(ks & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView: the version counters of the written tensors, bumped after the kernel ran.
void bump_versions(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                   torch::jit::Stack* stack) {
  const auto written = written_args(op, *stack);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const auto& w : written)
    for (const auto& t : w.tensors)
      if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, Autograd, m) {
  for (const char* name : kInPlaceOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&check_written>());
}

TORCH_LIBRARY_IMPL(fastcl, ADInplaceOrView, m) {
  for (const char* name : kInPlaceOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&bump_versions>());
}

}  // namespace fastcl
