// Helpers of the CPU list kernels: contiguous staging and one parallel loop over the
// elements of a whole tensor list (work is split by element count, not by tensor count).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace fastcl {
namespace cpu {

// Elements per parallel task: large enough that a task amortises its start, small enough
// that two threads share a 1e5-element tensor.
constexpr int64_t kGrain = 16384;

// A contiguous view of `t`, or a contiguous copy when `t` is strided. Written tensors are
// staged with stage() and copied back with unstage() after the kernel ran.
struct Staged {
  at::Tensor orig;
  at::Tensor work;
};

inline Staged stage(const at::Tensor& t) {
  return Staged{t, t.is_contiguous() ? t : t.contiguous()};
}

inline void unstage(const std::vector<Staged>& s) {
  for (const auto& x : s)
    if (!x.work.is_same(x.orig)) x.orig.copy_(x.work);
}

inline std::vector<Staged> stage_all(at::TensorList ts) {
  std::vector<Staged> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(stage(t));
  return out;
}

// Runs body(i, begin, end) over the concatenated elements of tensors with `numel` elements
// each; every call covers a range [begin, end) of one tensor i.
template <typename F>
void for_each_range(const std::vector<int64_t>& numel, int64_t grain, const F& body) {
  std::vector<int64_t> off(numel.size() + 1, 0);
  for (size_t i = 0; i < numel.size(); ++i) off[i + 1] = off[i] + numel[i];
  const int64_t total = off.back();
  if (total == 0) return;
  at::parallel_for(0, total, grain, [&](int64_t b, int64_t e) {
    size_t i = std::upper_bound(off.begin(), off.end(), b) - off.begin() - 1;
    while (b < e && i < numel.size()) {
      const int64_t stop = std::min(e, off[i + 1]);
      if (stop > b) body(i, b - off[i], stop - off[i]);
      b = stop;
      ++i;
    }
  });
}

template <typename T>
inline T* ptr(const Staged& s) {
  return s.work.data_ptr<T>();
}

}  // namespace cpu
}  // namespace fastcl
