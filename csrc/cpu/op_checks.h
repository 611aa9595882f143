// The complete argument checks of each update op, shared by the CPU kernels
// (csrc/cpu/update_ops.cpp) and the CUDA glue (csrc/cuda/glue.cpp), so both backends accept and
// reject exactly the same calls with the same messages. Each runs before any element is written.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "cpu/checks.h"

namespace fastcl {

using OptTensorList = std::optional<at::TensorList>;

// The step size and prox strength of a proximal step, and its optional anchors / importance
// (prox_sgd_, prox_sgd, mlp_prox_steps_).
inline void check_step_args(const OptTensorList& anchors, const OptTensorList& importance,
                            double lr, double prox) {
  check_real("lr", lr, 0.0, INFINITY);
  check_real("prox", prox, 0.0, INFINITY);
  TORCH_CHECK_VALUE(anchors.has_value() == importance.has_value(),
                    "anchors and importance must both be given or both be None");
  TORCH_CHECK_VALUE(anchors.has_value() || prox == 0.0, "prox=", py_float(prox),
                    " needs anchors and importance (None is allowed only with prox=0)");
}

// prox_sgd_ (in_place) and prox_sgd.
inline void check_prox_sgd_args(at::TensorList params, at::TensorList grads,
                                const OptTensorList& anchors, const OptTensorList& importance,
                                double lr, double prox, bool in_place) {
  check_step_args(anchors, importance, lr, prox);
  std::vector<NamedList> lists{{"params", params}, {"grads", grads}};
  if (anchors) {
    lists.push_back({"anchors", *anchors});
    lists.push_back({"importance", *importance});
  }
  check_lists(lists);
  if (in_place) {
    std::vector<NamedList> inputs(lists.begin() + 1, lists.end());
    check_aliasing({{"params", params}}, inputs);
  }
}

inline void check_taylor_importance_args(at::TensorList importance, at::TensorList grads,
                                         at::TensorList params, double decay) {
  check_real("decay", decay, 0.0, 1.0);
  check_lists({{"importance", importance}, {"grads", grads}, {"params", params}});
  check_aliasing({{"importance", importance}}, {{"grads", grads}, {"params", params}});
}

inline void check_emcl_meta_step_args(at::TensorList params, at::TensorList fast_params,
                                      at::TensorList importance, at::TensorList meta_lrs,
                                      at::TensorList grads, double lam, double decay, double r,
                                      int64_t lr_mode, double alpha0, double eps) {
  check_real("lam", lam, 0.0, INFINITY);
  check_real("decay", decay, 0.0, 1.0);
  check_real("r", r, 0.0, INFINITY);
  check_real("alpha0", alpha0, 0.0, INFINITY);
  check_real("eps", eps, 0.0, INFINITY);
  TORCH_CHECK_VALUE(lr_mode == 0 || lr_mode == 1 || lr_mode == 2,
                    "lr_mode must be 0 (paper), 1 (stabilised) or 2 (inverse), got ", lr_mode);
  check_lists({{"params", params},
               {"fast_params", fast_params},
               {"importance", importance},
               {"meta_lrs", meta_lrs},
               {"grads", grads}});
  check_aliasing({{"params", params}, {"importance", importance}, {"meta_lrs", meta_lrs}},
                 {{"fast_params", fast_params}, {"grads", grads}});
}

// Returns the largest number of task learners T over the list (1 for an empty list).
inline int64_t check_trajectory_shift_args(at::TensorList phi, at::TensorList thetas,
                                           double meta_lr, bool shift) {
  check_real("meta_lr", meta_lr, 0.0, INFINITY);
  check_lists({{"phi", phi}, {"thetas", thetas, /*lead=*/true}});
  int64_t max_t = 1;
  for (size_t i = 0; i < thetas.size(); ++i) {
    TORCH_CHECK_VALUE(thetas[i].size(0) >= 1, "thetas[", i,
                      "] has T = 0 task learners; expected T >= 1");
    max_t = std::max(max_t, thetas[i].size(0));
  }
  if (shift) {
    check_aliasing({{"phi", phi}, {"thetas", thetas}}, {});
  } else {
    check_aliasing({{"phi", phi}}, {{"thetas", thetas}});
  }
  return max_t;
}

// mlp_prox_steps_: everything but the values of y (the CPU kernel reads them directly, the CUDA
// glue in one synchronisation; both report them with check_label_range). params is
// [W_1, b_1, ..., W_L, b_L] of a ReLU MLP: W_l [n_l, n_(l-1)], b_l [n_l], n_0 the features of
// one row of x. Returns L.
inline int64_t check_mlp_prox_steps_args(at::TensorList params, const at::Tensor& x,
                                         const at::Tensor& y, const OptTensorList& anchors,
                                         const OptTensorList& importance, double lr,
                                         double prox) {
  check_step_args(anchors, importance, lr, prox);
  TORCH_CHECK_VALUE(!params.empty() && params.size() % 2 == 0,
                    "params must be [W_1, b_1, ..., W_L, b_L] (an even, nonzero number of "
                    "tensors), got ", params.size(), " tensors");
  std::vector<NamedList> lists{{"params", params}};
  if (anchors) {
    lists.push_back({"anchors", *anchors});
    lists.push_back({"importance", *importance});
  }
  check_lists(lists);
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "params[0] has dtype ",
                   dtype_name(dtype), "; mlp_prox_steps_ takes float32 or float64");
  int64_t width = -1;  // n_(l-1)
  for (size_t l = 0; l < params.size(); l += 2) {
    const at::Tensor& w = params[l];
    const at::Tensor& b = params[l + 1];
    TORCH_CHECK_VALUE(w.dim() == 2, "params[", l, "] (W_", l / 2 + 1,
                      ") must be a matrix [out, in], got shape ", shape_str(w.sizes()));
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), "params[", l + 1, "] (b_",
                      l / 2 + 1, ") has shape ", shape_str(b.sizes()), "; expected (",
                      w.size(0), ",) to match W_", l / 2 + 1, " of shape ", shape_str(w.sizes()));
    TORCH_CHECK_VALUE(width < 0 || w.size(1) == width, "params[", l, "] (W_", l / 2 + 1,
                      ") has shape ", shape_str(w.sizes()), "; expected ", width,
                      " inputs (the outputs of W_", l / 2, ")");
    width = w.size(0);
  }
  const int64_t features = params[0].size(1);
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must be a batch [k, ...], got a scalar");
  int64_t row = 1;
  for (int64_t d = 1; d < x.dim(); ++d) row *= x.size(d);
  TORCH_CHECK_VALUE(row == features, "x has shape ", shape_str(x.sizes()), ": ", row,
                    " features per example; W_1 expects ", features);
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, "x has dtype ", dtype_name(x.scalar_type()),
                   " but params[0] has ", dtype_name(dtype));
  TORCH_CHECK_VALUE(y.scalar_type() == at::kLong && y.dim() == 1 && y.size(0) == x.size(0),
                    "y must be an int64 vector of length ", x.size(0),
                    " (the batch size of x), got ", dtype_name(y.scalar_type()), " ",
                    shape_str(y.sizes()));
  TORCH_CHECK_VALUE(x.device() == params[0].device() && y.device() == params[0].device(),
                    "x and y must be on the device of params[0] (", params[0].device(),
                    "), got x on ", x.device(), ", y on ", y.device());
  std::vector<NamedList> read{lone("x", x), lone("y", y)};
  if (anchors) {
    read.push_back({"anchors", *anchors});
    read.push_back({"importance", *importance});
  }
  // The inputs are read at every step while params change: no sharing at all, in place
  // included.
  check_aliasing({{"params", params}}, read, /*allow_in_place=*/false);
  return static_cast<int64_t>(params.size() / 2);
}

// The labels of mlp_prox_steps_ lie in [min, max]; they must be classes of the last layer.
inline void check_label_range(int64_t min, int64_t max, int64_t num_classes) {
  TORCH_CHECK_VALUE(min >= 0 && max < num_classes, "y must hold labels in [0, ", num_classes,
                    "), got values in [", min, ", ", max, "]");
}

}  // namespace fastcl
