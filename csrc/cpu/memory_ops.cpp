// CPU kernels of the episodic-memory ops: ring_insert_, ring_sample, reservoir_insert_.
//
// These run on every training step of experience replay with small batches (10 rows of 784
// floats), so the per-call cost is what matters: every argument is checked first (a rejected
// call writes nothing), slots are computed in one plain loop with the shared math of
// csrc/kernels/math.h, and rows are copied with memcpy (split across threads only when the
// rows to copy are large). Rows are copied as bytes, so every dtype of `data` is supported
// (float32/64, float16, bfloat16, uint8 images, ...).
//
// Randomness: ring_sample and reservoir_insert_ draw their uniforms exactly as the references
// in fastcl/ops/reference.py do (the numbers of `torch.rand(n, generator=..., dtype=float64)`,
// see uniforms() below) and apply the same formulas, so given the same generator state they return the
// same indices, bit for bit.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <unordered_set>
#include <vector>

#include "cpu/memory_checks.h"
#include "kernels/math.h"

namespace fastcl {
namespace cpu {
namespace {
namespace k = ::fastcl::kernels;

// Below this many bytes to copy, one thread copies all rows (a parallel region costs more than
// it saves); above it, rows are split across threads, kCopyGrain bytes per task at least.
constexpr int64_t kParallelCopyBytes = int64_t(1) << 20;
constexpr int64_t kCopyGrain = int64_t(1) << 18;



// The rows of `data` can be written with memcpy (else they are written with copy_).
bool rows_memcpy_ok(const at::Tensor& data) {
  return data.is_contiguous() && !data.is_conj() && !data.is_neg();
}

// data[dst[i]] <- src[i] for the listed pairs. Destinations are distinct (callers drop the rows a
// later row of the batch overwrites), so the copies may run in any order and in parallel.
void copy_rows(const at::Tensor& data, const at::Tensor& src, const std::vector<int64_t>& src_row,
               const std::vector<int64_t>& dst_row) {
  const int64_t count = static_cast<int64_t>(src_row.size());
  if (count == 0) return;
  if (!rows_memcpy_ok(data)) {
    for (int64_t i = 0; i < count; ++i) data.select(0, dst_row[i]).copy_(src.select(0, src_row[i]));
    return;
  }
  const int64_t row_bytes = data.numel() / data.size(0) * static_cast<int64_t>(data.element_size());
  if (row_bytes == 0) return;
  char* out = static_cast<char*>(data.data_ptr());
  const char* in = static_cast<const char*>(src.const_data_ptr());
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      std::memcpy(out + dst_row[i] * row_bytes, in + src_row[i] * row_bytes, row_bytes);
  };
  if (count > 1 && count * row_bytes >= kParallelCopyBytes) {
    at::parallel_for(0, count, std::max<int64_t>(1, kCopyGrain / row_bytes), body);
  } else {
    body(0, count);
  }
}


// counts[t, c] >= 0 everywhere (examples ever inserted into ring (t, c)).
void check_counts_nonnegative(const at::Tensor& counts) {
  const int64_t* p = counts.const_data_ptr<int64_t>();
  const int64_t s0 = counts.stride(0), s1 = counts.stride(1);
  for (int64_t t = 0; t < counts.size(0); ++t)
    for (int64_t c = 0; c < counts.size(1); ++c) {
      const int64_t v = p[t * s0 + c * s1];
      TORCH_CHECK_VALUE(v >= 0, "counts must be >= 0 (examples inserted per ring), got counts[",
                        t, ", ", c, "] = ", v);
    }
}

// ---------------------------------------------------------------------------- ring_insert_
void ring_insert_(const at::Tensor& data, const at::Tensor& counts, const at::Tensor& x,
                  const at::Tensor& y, int64_t task) {
  // ---- checks (the order of fastcl/ops/reference.py), before any write ----
  const RingLayout L = check_ring_insert_args(data, counts, x, y, task);
  const int64_t num_classes = L.num_classes, m = L.m, b = L.b;
  const int64_t* yp = y.const_data_ptr<int64_t>();
  const int64_t ys = y.stride(0);
  if (b > 0) {
    int64_t lo = yp[0], hi = yp[0];
    for (int64_t i = 1; i < b; ++i) {
      lo = std::min(lo, yp[i * ys]);
      hi = std::max(hi, yp[i * ys]);
    }
    TORCH_CHECK_VALUE(lo >= 0 && hi < num_classes, "y must hold labels in [0, ", num_classes,
                      "), got values in [", lo, ", ", hi, "]");
  }
  check_counts_nonnegative(counts);
  if (b == 0) return;

  // ---- slots: example i of class c goes to ring (task, c) at (counts + rank) % m ----
  const at::Tensor src = source_rows(x);
  int64_t* cnt = counts.mutable_data_ptr<int64_t>() + task * counts.stride(0);
  const int64_t cs = counts.stride(1);
  // per_class[c]: examples of class c met so far in the batch (after the first pass: all of
  // them); rank[i]: examples of the class of i before i in the batch.
  std::vector<int64_t> per_class(num_classes, 0);
  std::vector<int64_t> rank(b);
  for (int64_t i = 0; i < b; ++i) rank[i] = per_class[yp[i * ys]]++;
  // Only the examples no later example of their ring overwrites are copied (fewer than m come
  // after them): their slots are distinct, and the result is the one of inserting one by one.
  std::vector<int64_t> src_row, dst_row;
  src_row.reserve(b);
  dst_row.reserve(b);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t c = yp[i * ys];
    if (k::ring_survives(per_class[c] - rank[i] - 1, m)) {
      src_row.push_back(i);
      dst_row.push_back(k::ring_slot(task, c, num_classes, m, cnt[c * cs], rank[i]));
    }
  }
  // counts[task, c] += examples of class c (touching only the classes of the batch)
  for (int64_t i = 0; i < b; ++i) {
    const int64_t c = yp[i * ys];
    cnt[c * cs] += per_class[c];
    per_class[c] = 0;
  }
  copy_rows(data, src, src_row, dst_row);
}


// n uniforms in [0, 1), the very numbers `at::rand({n}, generator, kDouble)` returns on the CPU
// (ATen's CPU uniform kernel draws at::uniform_real_distribution<double> element by element
// under the generator's lock), without allocating a tensor or dispatching a kernel: the draw is
// on the hot path of every replay step. The tests compare against at::rand-based references.
void uniforms(std::optional<at::Generator> generator, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int64_t i = 0; i < n; ++i) out[i] = uniform(gen);
}

// ---------------------------------------------------------------------------- ring_sample
// The draws of ring_sample as row indices (checks included; see the reference for the law).
void sample_rows(const at::Tensor& counts, int64_t m, at::IntArrayRef tasks, int64_t n,
                 std::optional<at::Generator> generator, int64_t* op) {
  check_counts(counts);
  TORCH_CHECK_VALUE(m >= 1, "m must be an int >= 1, got ", m);
  TORCH_CHECK_VALUE(n >= 0, "n must be an int >= 0, got ", n);
  const int64_t num_tasks = counts.size(0), num_classes = counts.size(1);
  for (const int64_t t : tasks)
    TORCH_CHECK_VALUE(t >= 0 && t < num_tasks, "tasks must hold task ids in [0, ", num_tasks,
                      "), got ", t);
  check_counts_nonnegative(counts);

  // Filled rings of the selection in ring order (task-major, then class): ring r holds
  // fill[r] = min(counts, m) examples in rows base[r] .. base[r] + fill[r] - 1; ends[r] is the
  // running total of the fills, so draw k in [0, total) falls in the first ring with ends > k.
  std::vector<char> selected(num_tasks, 0);
  for (const int64_t t : tasks) selected[t] = 1;
  const int64_t* cp = counts.const_data_ptr<int64_t>();
  const int64_t s0 = counts.stride(0), s1 = counts.stride(1);
  std::vector<int64_t> ends, base;
  int64_t total = 0;
  for (int64_t t = 0; t < num_tasks; ++t) {
    if (!selected[t]) continue;
    for (int64_t c = 0; c < num_classes; ++c) {
      const int64_t fill = std::min(cp[t * s0 + c * s1], m);
      if (fill == 0) continue;
      total += fill;
      ends.push_back(total);
      base.push_back((t * num_classes + c) * m);
    }
  }
  TORCH_CHECK_VALUE(total > 0, "cannot sample: tasks ", tasks, " hold no examples");

  std::vector<double> u;
  uniforms(generator, n, u);
  const double total_d = static_cast<double>(total);
  const bool one_ring = ends.size() == 1;
  for (int64_t i = 0; i < n; ++i) {
    // k = floor(U * N) clamped to N - 1, as the reference.
    const int64_t kk = std::min(static_cast<int64_t>(std::floor(u[i] * total_d)), total - 1);
    const size_t r =
        one_ring ? 0 : std::upper_bound(ends.begin(), ends.end(), kk) - ends.begin();
    const int64_t start = r == 0 ? 0 : ends[r - 1];
    op[i] = base[r] + (kk - start);
  }
}

at::Tensor ring_sample(const at::Tensor& counts, int64_t m, at::IntArrayRef tasks, int64_t n,
                       std::optional<at::Generator> generator) {
  at::Tensor out = at::empty({std::max<int64_t>(n, 0)}, counts.options().dtype(at::kLong));
  sample_rows(counts, m, tasks, n, generator, out.mutable_data_ptr<int64_t>());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ring_sample_rows(
    const at::Tensor& data, const at::Tensor& counts, at::IntArrayRef tasks, int64_t n,
    std::optional<at::Generator> generator) {
  check_counts(counts);
  const int64_t num_classes = counts.size(1);
  const int64_t m = check_ring_rows(data, counts);
  TORCH_CHECK_VALUE(data.device() == counts.device(), "data is on ", data.device(),
                    " but counts is on ", counts.device());
  at::Tensor index = at::empty({std::max<int64_t>(n, 0)}, counts.options().dtype(at::kLong));
  int64_t* ip = index.mutable_data_ptr<int64_t>();
  sample_rows(counts, m, tasks, n, generator, ip);

  std::vector<int64_t> shape(data.sizes().begin(), data.sizes().end());
  shape[0] = n;
  at::Tensor out = at::empty(shape, data.options());
  at::Tensor labels = at::empty({n}, index.options());
  at::Tensor task_ids = at::empty({n}, index.options());
  int64_t* lp = labels.mutable_data_ptr<int64_t>();
  int64_t* tp = task_ids.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    lp[i] = (ip[i] / m) % num_classes;
    tp[i] = ip[i] / (m * num_classes);
  }
  if (n > 0 && data.numel() > 0) {
    if (rows_memcpy_ok(data)) {
      const int64_t row_bytes = data.stride(0) * data.element_size();
      const char* src = static_cast<const char*>(data.const_data_ptr());
      char* dst = static_cast<char*>(out.mutable_data_ptr());
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(dst + i * row_bytes, src + ip[i] * row_bytes, static_cast<size_t>(row_bytes));
    } else {
      out.copy_(data.index_select(0, index));
    }
  }
  return {out, labels, task_ids, index};
}

// ---------------------------------------------------------------------------- reservoir_insert_
at::Tensor reservoir_insert_(const at::Tensor& data, const at::Tensor& labels,
                             const at::Tensor& tasks, const at::Tensor& x, const at::Tensor& y,
                             int64_t task, int64_t n_seen, std::optional<at::Generator> generator) {
  // ---- checks (the order of fastcl/ops/reference.py), before any write ----
  const int64_t cap = check_reservoir_insert_args(data, labels, tasks, x, y, task, n_seen);
  const int64_t b = x.size(0);

  // ---- slots: algorithm R with the reference's B uniforms (drawn even when all are kept) ----
  std::vector<double> u;
  uniforms(generator, b, u);
  at::Tensor slots = at::empty({b}, data.options().dtype(at::kLong));
  if (b == 0) return slots;
  const double* up = u.data();
  int64_t* sp = slots.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) sp[i] = k::reservoir_slot(n_seen + i, up[i], cap);

  // The labels, read once (y shares no memory with what is written: check_memory_aliasing).
  const int64_t* yp = y.const_data_ptr<int64_t>();
  const int64_t ys = y.stride(0);
  std::vector<int64_t> yv(b);
  for (int64_t i = 0; i < b; ++i) yv[i] = yp[i * ys];
  const at::Tensor src = source_rows(x);

  int64_t* lp = labels.mutable_data_ptr<int64_t>();
  int64_t* tp = tasks.mutable_data_ptr<int64_t>();
  const int64_t ls = labels.stride(0), ts = tasks.stride(0);
  std::vector<int64_t> src_row, dst_row;
  src_row.reserve(b);
  dst_row.reserve(b);
  for (int64_t i = 0; i < b; ++i) {
    if (sp[i] < 0) continue;
    lp[sp[i] * ls] = yv[i];
    tp[sp[i] * ts] = task;
    src_row.push_back(i);
    dst_row.push_back(sp[i]);
  }
  // Two examples of the batch may draw one slot: the later one wins, as one by one. Drop the
  // earlier ones so the row copies have distinct destinations.
  const int64_t kept = static_cast<int64_t>(dst_row.size());
  if (kept > 1 && n_seen + b > cap) {
    std::vector<int64_t> s2, d2;
    s2.reserve(kept);
    d2.reserve(kept);
    std::unordered_set<int64_t> taken;
    const bool small = kept <= 64;  // a linear scan of d2 beats a hash set for small batches
    if (!small) taken.reserve(kept * 2);
    for (int64_t i = kept - 1; i >= 0; --i) {
      const bool fresh = small ? std::find(d2.begin(), d2.end(), dst_row[i]) == d2.end()
                               : taken.insert(dst_row[i]).second;
      if (fresh) {
        s2.push_back(src_row[i]);
        d2.push_back(dst_row[i]);
      }
    }
    src_row.swap(s2);
    dst_row.swap(d2);
  }
  copy_rows(data, src, src_row, dst_row);
  return slots;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) {
  m.impl("ring_insert_", &ring_insert_);
  m.impl("ring_sample", &ring_sample);
  m.impl("ring_sample_rows", &ring_sample_rows);
  m.impl("reservoir_insert_", &reservoir_insert_);
}

}  // namespace cpu
}  // namespace fastcl
