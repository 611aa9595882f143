// Argument checks of the episodic-memory ops shared by the CPU kernels
// (csrc/cpu/memory_ops.cpp) and the CUDA glue (csrc/cuda/glue.cpp): same conditions, same
// messages (those of fastcl/ops/reference.py).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <string>

namespace fastcl {

// "[B, 28, 28]" for an error message: the shape wanted for x given the row shape of data.
inline std::string batch_shape(const at::Tensor& data) {
  std::string s = "[B";
  for (int64_t d = 1; d < data.dim(); ++d) s += ", " + std::to_string(data.size(d));
  return s + "]";
}

inline void check_x_shape(const at::Tensor& x, const at::Tensor& data) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && data.dim() >= 1 && x.sizes().slice(1) == data.sizes().slice(1),
                    "x has shape ", x.sizes(), "; expected ", batch_shape(data),
                    " (the row shape of data)");
}

inline void check_no_overlap(const char* a_name, const at::Tensor& a, const char* b_name,
                             const at::Tensor& b) {
  TORCH_CHECK_VALUE(at::get_overlap_status(a, b) == at::MemOverlapStatus::No, a_name, " and ",
                    b_name, " share memory; they must be separate tensors");
}

inline void check_counts(const at::Tensor& counts) {
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kLong && counts.dim() == 2,
                   "counts must be a 2-d int64 tensor [num_tasks, num_classes], got ",
                   counts.scalar_type(), " ", counts.sizes());
}

}  // namespace fastcl
