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
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <string>

namespace fastcl {
namespace {

// Every op of csrc/ops.cpp that writes one of its arguments.
constexpr const char* kInPlaceOps[] = {"prox_sgd_",        "taylor_importance_", "emcl_meta_step_",
                                       "trajectory_shift_", "mlp_prox_steps_",    "ring_insert_",
                                       "reservoir_insert_"};

// Calls f(argument, index in its list or -1, tensor) for every tensor one call writes: its
// Tensor(a!) arguments, except the thetas of trajectory_shift_ with shift=False (it only reads
// them then). Reads the stack in place (no copies: this runs on every call).
template <typename F>
void for_each_written(const c10::OperatorHandle& op, const torch::jit::Stack& stack, F&& f) {
  const c10::FunctionSchema& schema = op.schema();
  const auto& args = schema.arguments();
  const size_t base = stack.size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::AliasInfo* alias = args[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    if (args[i].name() == "thetas" && schema.name() == "fastcl::trajectory_shift_" &&
        !stack[base + *schema.argumentIndexWithName("shift")].toBool())
      continue;
    const c10::IValue& v = stack[base + i];
    if (v.isTensor()) {
      f(args[i], -1, v.toTensor());
    } else if (v.isTensorList()) {
      const auto list = v.toListRef();
      for (size_t j = 0; j < list.size(); ++j) f(args[i], int64_t(j), list[j].toTensor());
    }
  }
}

// "params[2]" for a tensor of a list argument, "data" for a tensor argument (index -1).
std::string label(const c10::Argument& arg, int64_t index) {
  return index < 0 ? arg.name() : arg.name() + "[" + std::to_string(index) + "]";
}

// Autograd: refuses what PyTorch's in-place ops refuse, before anything runs. Inference tensors
// carry the Autograd key too (not the ADInplaceOrView one), so their check is here as well.
void check_written(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                   torch::jit::Stack* stack) {
  const bool grad = at::GradMode::is_enabled();
  const bool inference = c10::InferenceMode::is_enabled();
  for_each_written(op, *stack, [&](const c10::Argument& arg, int64_t i, const at::Tensor& t) {
    if (!t.defined()) return;
    TORCH_CHECK_VALUE(!(grad && t.requires_grad()), label(arg, i), " requires grad: ",
                      op.schema().name(),
                      " writes it in place and is not differentiable, so gradients through it "
                      "would be silently wrong; call the op under torch.no_grad(), or pass a "
                      "tensor that does not require grad");
    // bump_version() would raise for it once the kernel has written it
    TORCH_CHECK_VALUE(inference || t.unsafeGetTensorImpl()->version_counter().enabled(),
                      label(arg, i),
                      " is an inference tensor: an inplace update to an inference tensor outside "
                      "InferenceMode is not allowed (clone it outside InferenceMode first)");
  });
  at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(ks & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView: the version counters of the written tensors, bumped after the kernel ran.
void bump_versions(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                   torch::jit::Stack* stack) {
  c10::SmallVector<at::Tensor, 16> written;  // the stack's arguments are gone after the call
  for_each_written(op, *stack, [&](const c10::Argument&, int64_t, const at::Tensor& t) {
    if (t.defined()) written.push_back(t);
  });
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const auto& t : written) t.unsafeGetTensorImpl()->bump_version();
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
