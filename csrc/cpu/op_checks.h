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

// prox_sgd_ (in_place) and prox_sgd.
inline void check_prox_sgd_args(at::TensorList params, at::TensorList grads,
                                const OptTensorList& anchors, const OptTensorList& importance,
                                double lr, double prox, bool in_place) {
  check_real("lr", lr, 0.0, INFINITY);
  check_real("prox", prox, 0.0, INFINITY);
  TORCH_CHECK_VALUE(anchors.has_value() == importance.has_value(),
                    "anchors and importance must both be given or both be None");
  TORCH_CHECK_VALUE(anchors.has_value() || prox == 0.0, "prox=", py_float(prox),
                    " needs anchors and importance (None is allowed only with prox=0)");
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
  TORCH_CHECK_VALUE(lr_mode == 0 || lr_mode == 1,
                    "lr_mode must be 0 (paper) or 1 (stabilised), got ", lr_mode);
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

}  // namespace fastcl
