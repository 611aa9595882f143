// Argument checks shared by every list op (CPU and CUDA). They mirror the checks of
// fastcl/ops/reference.py, raise ValueError / TypeError naming the argument, and run before
// any element is written, so a rejected call changes nothing.
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <string>
#include <vector>

namespace fastcl {

struct NamedList {
  const char* name;
  at::TensorList tensors;
  bool lead = false;  // carries one extra leading dimension (T) over the reference list
};

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Equal lengths; one floating dtype and one device; shapes matching the first list.
inline void check_lists(const std::vector<NamedList>& lists) {
  const NamedList& ref = lists.at(0);
  for (const auto& l : lists) {
    TORCH_CHECK_VALUE(l.tensors.size() == ref.tensors.size(), l.name, " has ", l.tensors.size(),
                      " tensors but ", ref.name, " has ", ref.tensors.size(),
                      ": lists must have equal length");
  }
  if (ref.tensors.empty()) return;
  const auto dtype = ref.tensors[0].scalar_type();
  const auto device = ref.tensors[0].device();
  for (const auto& l : lists) {
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const at::Tensor& t = l.tensors[i];
      TORCH_CHECK_VALUE(t.defined(), l.name, "[", i, "] is undefined");
      TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), l.name, "[", i, "] has dtype ",
                       t.scalar_type(), "; expected a floating dtype");
      TORCH_CHECK_TYPE(t.scalar_type() == dtype, l.name, "[", i, "] has dtype ", t.scalar_type(),
                       " but ", ref.name, "[0] has ", dtype);
      TORCH_CHECK_VALUE(t.device() == device, l.name, "[", i, "] is on ", t.device(), " but ",
                        ref.name, "[0] is on ", device);
    }
  }
  for (const auto& l : lists) {
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const at::Tensor& t = l.tensors[i];
      const auto want = ref.tensors[i].sizes();
      if (l.lead) {
        TORCH_CHECK_VALUE(t.dim() >= 1, l.name, "[", i,
                          "] must have a leading T dimension, got a scalar");
        TORCH_CHECK_VALUE(t.sizes().slice(1) == want, l.name, "[", i, "] has shape ", t.sizes(),
                          "; expected ", want, " with a leading T dimension");
      } else {
        TORCH_CHECK_VALUE(t.sizes() == want, l.name, "[", i, "] has shape ", t.sizes(),
                          "; expected ", want);
      }
    }
  }
}

// A written tensor may be the very same memory as an input of its index (in place), but not
// partly overlap it, and must not overlap itself (expanded views).
inline void check_writable(const char* name, at::TensorList out,
                           const std::vector<NamedList>& inputs) {
  for (size_t i = 0; i < out.size(); ++i) {
    TORCH_CHECK_VALUE(at::has_internal_overlap(out[i]) != at::MemOverlap::Yes, name, "[", i,
                      "] has internally overlapping memory (an expanded view?); it cannot be "
                      "written in place");
    for (const auto& in : inputs) {
      if (in.lead || i >= in.tensors.size()) continue;
      const auto st = at::get_overlap_status(out[i], in.tensors[i]);
      TORCH_CHECK_VALUE(st != at::MemOverlapStatus::Partial, name, "[", i, "] and ", in.name, "[",
                        i, "] partially overlap in memory; only full aliasing is supported");
    }
  }
}

inline void check_real(const char* name, double v, double low, double high) {
  TORCH_CHECK_VALUE(!std::isnan(v), name, " must not be nan");
  TORCH_CHECK_VALUE(v >= low, name, " must be >= ", low, ", got ", v);
  TORCH_CHECK_VALUE(v <= high, name, " must be <= ", high, ", got ", v);
}

}  // namespace fastcl
