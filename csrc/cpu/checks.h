// Argument checks shared by every list op (CPU and CUDA). They mirror the checks of
// fastcl/ops/reference.py, raise ValueError / TypeError naming the argument, and run before
// any element is written, so a rejected call changes nothing.
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace fastcl {

struct NamedList {
  const char* name;
  at::TensorList tensors;
  bool lead = false;  // carries one extra leading dimension (T) over the reference list
  bool lone = false;  // a single tensor argument: named "x", not "x[0]", in messages
};

// One tensor argument of a call (check_aliasing names it without an index).
inline NamedList lone(const char* name, const at::Tensor& t) {
  return NamedList{name, at::TensorList(t), false, true};
}

// "torch.float64", as Python prints a dtype (and as the reference's messages say).
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

// A shape as Python prints a tuple: "()", "(5,)", "(3, 4)" (as the reference's messages say).
inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// A double as Python's repr prints it: shortest round-trip digits ("1.0000001", not the
// stream's "1"), "1.0" for integral values, scientific below 1e-4 and from 1e16 on.
inline std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  auto sci = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, sci.ptr);
  const int exp10 = std::stoi(s.substr(s.find('e') + 1));
  if (v != 0.0 && (exp10 < -4 || exp10 >= 16)) return s;  // "1e-05", "1.5e+20"
  auto fix = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed);
  s.assign(buf, fix.ptr);
  if (s.find('.') == std::string::npos) s += ".0";
  return s;
}

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
                       dtype_name(t.scalar_type()), "; expected a floating dtype");
      TORCH_CHECK_TYPE(t.scalar_type() == dtype, l.name, "[", i, "] has dtype ",
                       dtype_name(t.scalar_type()), " but ", ref.name, "[0] has ",
                       dtype_name(dtype));
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
        TORCH_CHECK_VALUE(t.sizes().slice(1) == want, l.name, "[", i, "] has shape ",
                          shape_str(t.sizes()), "; expected ", shape_str(want),
                          " with a leading T dimension");
      } else {
        TORCH_CHECK_VALUE(t.sizes() == want, l.name, "[", i, "] has shape ", shape_str(t.sizes()),
                          "; expected ", shape_str(want));
      }
    }
  }
}

// Memory aliasing of the tensor arguments of one call. A written tensor may be the very same
// memory (same start, shape and strides) as a *read* argument of its own index: that is an
// in-place update (a grad list that is the param list). Any other overlap of a written tensor,
// with a read tensor of another index, with another written tensor (the same tensor twice in
// a list, or importance that is meta_lrs), or a partial overlap, makes the result depend on the
// order the elements are written in: rejected. A written tensor must not overlap itself
// (expanded views). Views that are neither contiguous nor a permutation of a contiguous tensor
// ("too hard" for at::get_overlap_status) are accepted against read tensors (the kernels stage
// them into contiguous copies before any write) but not against written ones when their byte
// ranges intersect. Cost: one sort of the byte ranges, O(n log n) for disjoint tensors.
// allow_in_place = false rejects the in-place exception too (ops that read their inputs over
// several steps while writing, such as mlp_prox_steps_).
inline void check_aliasing(const std::vector<NamedList>& written,
                           const std::vector<NamedList>& read, bool allow_in_place = true) {
  struct Entry {
    std::string name;  // "params[2]", or "x" for a lone tensor
    size_t index;
    bool written;
    const at::Tensor* t;
    uintptr_t begin, end;
  };
  std::vector<Entry> entries;
  auto add = [&](const NamedList& l, bool w) {
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const at::Tensor& t = l.tensors[i];
      std::string name = l.lone ? l.name : std::string(l.name) + "[" + std::to_string(i) + "]";
      if (w) {
        TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, name,
                          " has internally overlapping memory (an expanded view?); it cannot be "
                          "written in place");
      }
      if (t.numel() == 0 || !t.has_storage()) continue;
      int64_t span = 1;
      for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * t.stride(d);
      const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
      entries.push_back(
          {std::move(name), i, w, &t, begin, begin + uintptr_t(span) * t.element_size()});
    }
  };
  for (const auto& l : written) add(l, true);
  for (const auto& l : read) add(l, false);
  // stable: of two tensors starting at one address, the one listed first is named first
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& x, const Entry& y) { return x.begin < y.begin; });
  for (size_t k = 0; k < entries.size(); ++k) {
    const Entry& x = entries[k];
    for (size_t m = k + 1; m < entries.size() && entries[m].begin < x.end; ++m) {
      const Entry& y = entries[m];
      if (!x.written && !y.written) continue;
      const auto st = at::get_overlap_status(*x.t, *y.t);
      if (st == at::MemOverlapStatus::No) continue;
      const Entry& w = x.written ? x : y;  // name the written tensor first
      const Entry& o = x.written ? y : x;
      if (st == at::MemOverlapStatus::TooHard) {
        // A strided view and a tensor whose byte ranges intersect. Against a read tensor this
        // is safe when the op reads its inputs once (one of the two is staged into a
        // contiguous copy before any write); not so when it reads them over several steps
        // (!allow_in_place). Two written ones would be written back in an order the reference
        // does not follow.
        TORCH_CHECK_VALUE(allow_in_place && !(x.written && y.written), w.name, " and ", o.name,
                          " are strided views of one storage whose byte ranges intersect; "
                          "written tensors must be provably disjoint");
        continue;
      }
      const bool in_place = allow_in_place && st == at::MemOverlapStatus::Full &&
                            x.index == y.index && x.written != y.written;
      TORCH_CHECK_VALUE(in_place, w.name, " and ", o.name, " ",
                        st == at::MemOverlapStatus::Full ? "are the same memory"
                                                         : "partially overlap in memory",
                        allow_in_place
                            ? "; a written tensor may only alias a read argument of its own index "
                              "(in place), entirely"
                            : "; the written tensors must not share memory with any other argument");
    }
  }
}

// A float argument: finite (no op defines what an infinite step size or rate would mean) and
// in [low, high] (high = INFINITY: no upper bound).
inline void check_real(const char* name, double v, double low, double high) {
  TORCH_CHECK_VALUE(!std::isnan(v), name, " must not be nan");
  TORCH_CHECK_VALUE(v >= low, name, " must be >= ", py_float(low), ", got ", py_float(v));
  TORCH_CHECK_VALUE(v <= high, name, " must be <= ", py_float(high), ", got ", py_float(v));
  TORCH_CHECK_VALUE(std::isfinite(v), name, " must be finite, got ", py_float(v));
}

}  // namespace fastcl
