// CUDA kernels of the parameter-update list ops: prox_sgd_ / prox_sgd (incl. plain SGD),
// taylor_importance_, emcl_meta_step_, trajectory_shift_.
//
// Multi-tensor launches: the pointers and sizes of up to ListMeta<D>::kMax tensors (D lists)
// travel in one kernel argument struct (< 4 KB, passed as __grid_constant__ so it is read from
// the constant bank, never copied to local memory). Each tensor is cut into chunks of kChunk
// elements; the chunks of all tensors of a launch are numbered consecutively (chunk_start holds
// the prefix sums), and the blocks walk them with a grid-stride loop, finding a chunk's tensor
// by binary search. One launch therefore covers any sizes; a list of more than kMax non-empty
// tensors takes ceil(n / kMax) launches.
//
// Inside a chunk every thread handles 16-byte vectors (4 floats, 2 doubles, 8 halves) when all
// pointers of the tensor are 16-byte aligned (chunk starts keep that alignment), and single
// elements otherwise and for the tail. Storage is float, double, half or bfloat16; the math is
// csrc/kernels/math.h in float (double for double).
#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "kernels/math.h"

namespace fastcl {
namespace cuda {
namespace {

namespace k = ::fastcl::kernels;
using detail::aligned16;
using detail::from_math;
using detail::kThreads;
using detail::math_t;
using detail::to_math;
using detail::Vec16;

constexpr int64_t kChunk = 8192;  // elements per chunk (a multiple of every vector width)

// Kernel argument block of one launch over D lists. Kept under 4 KB together with the op.
template <int D>
struct ListMeta {
  static constexpr int kMax = (3840 - 16) / (8 * (D + 3));
  void* ptr[D][kMax];
  int64_t numel[kMax];
  int64_t aux[kMax];  // trajectory_shift: learners T of the tensor; unused otherwise
  int64_t chunk_start[kMax + 1];
  int num;
};
static_assert(sizeof(ListMeta<2>) <= 3840, "ListMeta<2> too large");
static_assert(sizeof(ListMeta<3>) <= 3840, "ListMeta<3> too large");
static_assert(sizeof(ListMeta<5>) <= 3840, "ListMeta<5> too large");

// The tensor that owns global chunk c of the launch: the last t with chunk_start[t] <= c.
template <int D>
__device__ __forceinline__ int find_tensor(const ListMeta<D>& meta, int64_t c) {
  int lo = 0, hi = meta.num - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta.chunk_start[mid] <= c)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// ---- per-element ops: v[d] holds element j of list d; lists in kWrite are stored back ----
template <typename M>
struct SgdOp {  // lists: out, params, grads
  static constexpr int kDepth = 3;
  static constexpr unsigned kRead = 0b110, kWrite = 0b001;
  M lr;
  __device__ __forceinline__ void operator()(M (&v)[3]) const { v[0] = k::sgd(v[1], v[2], lr); }
};

template <typename M>
struct ProxOp {  // lists: out, params, grads, anchors, importance
  static constexpr int kDepth = 5;
  static constexpr unsigned kRead = 0b11110, kWrite = 0b00001;
  M lr, prox;
  __device__ __forceinline__ void operator()(M (&v)[5]) const {
    v[0] = k::prox_sgd(v[1], v[2], v[3], v[4], lr, prox);
  }
};

template <typename M>
struct TaylorOp {  // lists: importance, grads, params
  static constexpr int kDepth = 3;
  static constexpr unsigned kRead = 0b111, kWrite = 0b001;
  M decay, one_minus_decay;
  __device__ __forceinline__ void operator()(M (&v)[3]) const {
    v[0] = k::taylor(v[0], v[1], v[2], decay, one_minus_decay);
  }
};

template <typename M>
struct EmclOp {  // lists: params, fast_params, importance, meta_lrs, grads
  static constexpr int kDepth = 5;
  static constexpr unsigned kRead = 0b11111, kWrite = 0b01101;
  M lam, decay, one_minus_decay, r, alpha0, eps;
  int lr_mode;
  __device__ __forceinline__ void operator()(M (&v)[5]) const {
    k::emcl_meta(v[0], v[1], v[2], v[3], v[4], lam, decay, one_minus_decay, r, lr_mode, alpha0,
                 eps);
  }
};

// One chunk [0, len) of one tensor: p[d] points at the chunk's first element of list d.
template <typename S, typename Op>
__device__ __forceinline__ void elementwise_chunk(S* const (&p)[Op::kDepth], int64_t len,
                                                  bool vec_ok, const Op& op) {
  constexpr int D = Op::kDepth;
  using M = math_t<S>;
  using V = Vec16<S>;
  constexpr int N = V::kSize;
  int64_t first_scalar = 0;
  if (vec_ok) {
    const int64_t nvec = len / N;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      V buf[D];
#pragma unroll
      for (int d = 0; d < D; ++d)
        if ((Op::kRead >> d) & 1u) buf[d] = reinterpret_cast<const V*>(p[d])[i];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        M v[D];
#pragma unroll
        for (int d = 0; d < D; ++d) v[d] = ((Op::kRead >> d) & 1u) ? to_math(buf[d].v[j]) : M(0);
        op(v);
#pragma unroll
        for (int d = 0; d < D; ++d)
          if ((Op::kWrite >> d) & 1u) buf[d].v[j] = from_math<S>(v[d]);
      }
#pragma unroll
      for (int d = 0; d < D; ++d)
        if ((Op::kWrite >> d) & 1u) reinterpret_cast<V*>(p[d])[i] = buf[d];
    }
    first_scalar = nvec * N;
  }
  for (int64_t i = first_scalar + threadIdx.x; i < len; i += blockDim.x) {
    M v[D];
#pragma unroll
    for (int d = 0; d < D; ++d) v[d] = ((Op::kRead >> d) & 1u) ? to_math(p[d][i]) : M(0);
    op(v);
#pragma unroll
    for (int d = 0; d < D; ++d)
      if ((Op::kWrite >> d) & 1u) p[d][i] = from_math<S>(v[d]);
  }
}

template <typename S, typename Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(const __grid_constant__ ListMeta<Op::kDepth> meta, const Op op) {
  constexpr int D = Op::kDepth;
  const int64_t total = meta.chunk_start[meta.num];
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    const int t = find_tensor(meta, c);
    const int64_t begin = (c - meta.chunk_start[t]) * kChunk;
    const int64_t rest = meta.numel[t] - begin;
    const int64_t len = rest < kChunk ? rest : kChunk;
    S* p[D];
    bool vec_ok = true;
#pragma unroll
    for (int d = 0; d < D; ++d) {
      p[d] = static_cast<S*>(meta.ptr[d][t]);
      vec_ok = vec_ok && aligned16(p[d]);
      p[d] += begin;
    }
    elementwise_chunk<S, Op>(p, len, vec_ok, op);
  }
}

// CTS / Reptile shift of one chunk: phi[j] for j in [0, len), learner t's element j at
// theta[t*stride + j]. The mean is the sum over learners divided by T, in the math type.
template <typename S>
__device__ __forceinline__ void shift_chunk(S* phi, S* theta, int64_t learners, int64_t stride,
                                            int64_t len, bool vec_ok, math_t<S> meta_lr,
                                            bool shift) {
  using M = math_t<S>;
  using V = Vec16<S>;
  constexpr int N = V::kSize;
  const M count = M(learners);
  int64_t first_scalar = 0;
  if (vec_ok) {
    const int64_t nvec = len / N;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      M acc[N];
      V b = reinterpret_cast<const V*>(theta)[i];
#pragma unroll
      for (int j = 0; j < N; ++j) acc[j] = to_math(b.v[j]);
      for (int64_t t = 1; t < learners; ++t) {
        b = reinterpret_cast<const V*>(theta + t * stride)[i];
#pragma unroll
        for (int j = 0; j < N; ++j) acc[j] += to_math(b.v[j]);
      }
      V ph = reinterpret_cast<const V*>(phi)[i];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const M pv = to_math(ph.v[j]);
        acc[j] = k::shift_delta(acc[j] / count, pv, meta_lr);  // acc now holds delta
        ph.v[j] = from_math<S>(pv + acc[j]);
      }
      reinterpret_cast<V*>(phi)[i] = ph;
      if (shift) {
        for (int64_t t = 0; t < learners; ++t) {
          V* q = reinterpret_cast<V*>(theta + t * stride) + i;
          b = *q;
#pragma unroll
          for (int j = 0; j < N; ++j) b.v[j] = from_math<S>(to_math(b.v[j]) + acc[j]);
          *q = b;
        }
      }
    }
    first_scalar = nvec * N;
  }
  for (int64_t i = first_scalar + threadIdx.x; i < len; i += blockDim.x) {
    M acc = to_math(theta[i]);
    for (int64_t t = 1; t < learners; ++t) acc += to_math(theta[t * stride + i]);
    const M pv = to_math(phi[i]);
    const M d = k::shift_delta(acc / count, pv, meta_lr);
    phi[i] = from_math<S>(pv + d);
    if (shift)
      for (int64_t t = 0; t < learners; ++t)
        theta[t * stride + i] = from_math<S>(to_math(theta[t * stride + i]) + d);
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    shift_kernel(const __grid_constant__ ListMeta<2> meta, const math_t<S> meta_lr,
                 const bool shift) {
  const int64_t total = meta.chunk_start[meta.num];
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    const int t = find_tensor(meta, c);
    const int64_t stride = meta.numel[t];
    const int64_t begin = (c - meta.chunk_start[t]) * kChunk;
    const int64_t rest = stride - begin;
    const int64_t len = rest < kChunk ? rest : kChunk;
    S* phi = static_cast<S*>(meta.ptr[0][t]);
    S* theta = static_cast<S*>(meta.ptr[1][t]);
    const bool vec_ok = aligned16(phi) && aligned16(theta) &&
                        (stride * static_cast<int64_t>(sizeof(S))) % 16 == 0;
    shift_chunk<S>(phi + begin, theta + begin, meta.aux[t], stride, len, vec_ok, meta_lr, shift);
  }
}

// ---- host side ----

// Packs the non-empty tensors of D lists into ListMeta blocks and calls launch(meta, chunks)
// for each full block and for the rest. lists[d][i]: pointer of tensor i of list d.
template <int D, typename Launch>
cudaError_t for_each_launch(int64_t n, const int64_t* numel, const int64_t* aux,
                            const void* const* const (&lists)[D], const Launch& launch) {
  ListMeta<D> meta;
  meta.num = 0;
  meta.chunk_start[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (numel[i] <= 0) continue;
    const int s = meta.num;
    for (int d = 0; d < D; ++d) meta.ptr[d][s] = const_cast<void*>(lists[d][i]);
    meta.numel[s] = numel[i];
    meta.aux[s] = aux ? aux[i] : 0;
    meta.chunk_start[s + 1] = meta.chunk_start[s] + (numel[i] + kChunk - 1) / kChunk;
    meta.num = s + 1;
    if (meta.num == ListMeta<D>::kMax) {
      launch(meta, meta.chunk_start[meta.num]);
      meta.num = 0;
    }
  }
  if (meta.num > 0) launch(meta, meta.chunk_start[meta.num]);
  return cudaGetLastError();
}

template <typename S, typename Op>
cudaError_t run_elementwise(int64_t n, const int64_t* numel,
                            const void* const* const (&lists)[Op::kDepth], const Op& op,
                            cudaStream_t stream) {
  static_assert(sizeof(ListMeta<Op::kDepth>) + sizeof(Op) < 4096, "kernel arguments over 4 KB");
  return for_each_launch<Op::kDepth>(
      n, numel, nullptr, lists, [&](const ListMeta<Op::kDepth>& meta, int64_t chunks) {
        elementwise_kernel<S, Op><<<detail::grid_for(chunks), kThreads, 0, stream>>>(meta, op);
      });
}

// Calls f(S{}) with S the storage type of `dtype`.
template <typename F>
cudaError_t dispatch(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat64:
      return f(double{});
    case DType::kFloat16:
      return f(__half{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t prox_sgd(DType dtype, int64_t n, const int64_t* numel, void* const* out,
                     const void* const* params, const void* const* grads,
                     const void* const* anchors, const void* const* importance, double lr,
                     double prox, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if ((anchors == nullptr) != (importance == nullptr)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = decltype(tag);
    using M = math_t<S>;
    if (anchors == nullptr) {
      const void* const* lists[3] = {out, params, grads};
      return run_elementwise<S>(n, numel, lists, SgdOp<M>{M(lr)}, stream);
    }
    const void* const* lists[5] = {out, params, grads, anchors, importance};
    return run_elementwise<S>(n, numel, lists, ProxOp<M>{M(lr), M(prox)}, stream);
  });
}

cudaError_t taylor_importance(DType dtype, int64_t n, const int64_t* numel, void* const* importance,
                              const void* const* grads, const void* const* params, double decay,
                              cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using S = decltype(tag);
    using M = math_t<S>;
    const void* const* lists[3] = {importance, grads, params};
    return run_elementwise<S>(n, numel, lists, TaylorOp<M>{M(decay), M(1.0 - decay)}, stream);
  });
}

cudaError_t emcl_meta_step(DType dtype, int64_t n, const int64_t* numel, void* const* params,
                           const void* const* fast_params, void* const* importance,
                           void* const* meta_lrs, const void* const* grads, double lam,
                           double decay, double r, int lr_mode, double alpha0, double eps,
                           cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (lr_mode < 0 || lr_mode > 2) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = decltype(tag);
    using M = math_t<S>;
    const void* const* lists[5] = {params, fast_params, importance, meta_lrs, grads};
    EmclOp<M> op{M(lam), M(decay), M(1.0 - decay), M(r), M(alpha0), M(eps), lr_mode};
    return run_elementwise<S>(n, numel, lists, op, stream);
  });
}

cudaError_t trajectory_shift(DType dtype, int64_t n, const int64_t* numel, const int64_t* learners,
                             void* const* phi, void* const* thetas, double meta_lr, bool shift,
                             cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  for (int64_t i = 0; i < n; ++i)
    if (learners[i] < 1) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = decltype(tag);
    using M = math_t<S>;
    const void* const* lists[2] = {phi, thetas};
    const M lr = M(meta_lr);
    return for_each_launch<2>(n, numel, learners, lists,
                              [&](const ListMeta<2>& meta, int64_t chunks) {
                                shift_kernel<S><<<detail::grid_for(chunks), kThreads, 0, stream>>>(
                                    meta, lr, shift);
                              });
  });
}

}  // namespace cuda
}  // namespace fastcl
