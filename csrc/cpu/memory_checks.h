// Argument checks of the episodic-memory ops shared by the CPU kernels
// (csrc/cpu/memory_ops.cpp) and the CUDA glue (csrc/cuda/glue.cpp): same conditions, same
// messages (those of fastcl/ops/reference.py).
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "cpu/checks.h"

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

inline void check_counts(const at::Tensor& counts) {
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kLong && counts.dim() == 2,
                   "counts must be a 2-d int64 tensor [num_tasks, num_classes], got ",
                   counts.scalar_type(), " ", counts.sizes());
}

// m, the slots per ring: data must hold num_tasks*num_classes*m rows with m >= 1 (counts is
// [num_tasks, num_classes], checked by check_counts).
inline int64_t check_ring_rows(const at::Tensor& data, const at::Tensor& counts) {
  const int64_t rings = counts.size(0) * counts.size(1);
  const int64_t rows = data.dim() >= 1 ? data.size(0) : 0;
  TORCH_CHECK_VALUE(rings > 0 && rows > 0 && rows % rings == 0,
                    "data must have num_tasks*num_classes*m rows with m >= 1; got ", rows,
                    " rows for ", rings, " rings");
  return rows / rings;
}

// The memory ops write their storage (data, counts / labels, tasks) in an order of their own
// (one pass, rows in parallel) where the reference writes example by example: a written tensor
// sharing memory with another argument (x a view of data, y a view of labels, labels that are
// tasks) would make the result depend on that order. No sharing at all is allowed (with the
// rules and messages of check_aliasing: disjoint views of one storage are fine).
inline void check_memory_aliasing(const std::vector<NamedList>& written, const at::Tensor& x,
                                  const at::Tensor& y) {
  check_aliasing(written, {lone("x", x), lone("y", y)}, /*allow_in_place=*/false);
}

// x as a plain contiguous buffer (checked disjoint from data by check_memory_aliasing).
inline at::Tensor source_rows(const at::Tensor& x) {
  return x.resolve_conj().resolve_neg().contiguous();
}

struct RingLayout {
  int64_t num_tasks, num_classes, m, b;
};

// ring_insert_: shapes, dtypes, devices, the task id and memory sharing (not the values of y
// and counts, which the CPU reads directly and the CUDA glue reads in one synchronisation).
inline RingLayout check_ring_insert_args(const at::Tensor& data, const at::Tensor& counts,
                                         const at::Tensor& x, const at::Tensor& y, int64_t task) {
  check_counts(counts);
  const int64_t num_tasks = counts.size(0), num_classes = counts.size(1);
  const int64_t m = check_ring_rows(data, counts);
  check_x_shape(x, data);
  const int64_t b = x.size(0);
  TORCH_CHECK_VALUE(y.scalar_type() == at::kLong && y.dim() == 1 && y.size(0) == b,
                    "y must be an int64 vector of length ", b, " (the batch size of x), got ",
                    y.scalar_type(), " ", y.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == data.scalar_type(), "x has dtype ", x.scalar_type(),
                   " but data has ", data.scalar_type());
  TORCH_CHECK_VALUE(x.device() == data.device() && y.device() == data.device() &&
                        counts.device() == data.device(),
                    "data, counts, x and y must be on one device; got data on ", data.device(),
                    ", counts on ", counts.device(), ", x on ", x.device(), ", y on ", y.device());
  TORCH_CHECK_VALUE(task >= 0 && task < num_tasks, "task must be an int in [0, ", num_tasks,
                    "), got ", task);
  check_memory_aliasing({lone("data", data), lone("counts", counts)}, x, y);
  return RingLayout{num_tasks, num_classes, m, b};
}

// reservoir_insert_: everything but the device (checked by the caller); returns the capacity.
inline int64_t check_reservoir_insert_args(const at::Tensor& data, const at::Tensor& labels,
                                           const at::Tensor& tasks, const at::Tensor& x,
                                           const at::Tensor& y, int64_t task, int64_t n_seen) {
  const int64_t cap = data.dim() >= 1 ? data.size(0) : 0;
  TORCH_CHECK_VALUE(cap >= 1, "data must have at least one row (capacity >= 1), got shape ",
                    data.sizes());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong && labels.dim() == 1 && labels.size(0) == cap,
                    "labels must be an int64 vector of length ", cap,
                    " (the rows of data), got ", labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK_VALUE(tasks.scalar_type() == at::kLong && tasks.dim() == 1 && tasks.size(0) == cap,
                    "tasks must be an int64 vector of length ", cap, " (the rows of data), got ",
                    tasks.scalar_type(), " ", tasks.sizes());
  check_x_shape(x, data);
  const int64_t b = x.size(0);
  TORCH_CHECK_TYPE(x.scalar_type() == data.scalar_type(), "x has dtype ", x.scalar_type(),
                   " but data has ", data.scalar_type());
  TORCH_CHECK_VALUE(y.scalar_type() == at::kLong && y.dim() == 1 && y.size(0) == b,
                    "y must be an int64 vector of length ", b, " (the batch size of x), got ",
                    y.scalar_type(), " ", y.sizes());
  TORCH_CHECK_VALUE(n_seen >= 0, "n_seen must be an int >= 0, got ", n_seen);
  TORCH_CHECK_VALUE(task >= 0, "task must be an int >= 0, got ", task);
  TORCH_CHECK_VALUE(x.device() == data.device() && y.device() == data.device() &&
                        labels.device() == data.device() && tasks.device() == data.device(),
                    "data, labels, tasks, x and y must be on one device; got data on ",
                    data.device(), ", labels on ", labels.device(), ", tasks on ", tasks.device(),
                    ", x on ", x.device(), ", y on ", y.device());
  check_memory_aliasing({lone("data", data), lone("labels", labels), lone("tasks", tasks)}, x, y);
  return cap;
}

}  // namespace fastcl
