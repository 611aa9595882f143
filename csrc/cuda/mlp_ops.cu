// CUDA kernels of mlp_prox_steps_: the EMCL inner loop of a ReLU MLP, k sequential
// single-example gradient steps, each followed by the prox step of csrc/kernels/math.h
// (fastcl/ops/reference.py is the specification).
//
// Per example i, all on one stream (the stream orders the kernels; no host synchronisation):
//   forward, l = 1..L:   one warp per output row j: out_l[j] = b_l[j] + W_l[j, :] . a_(l-1),
//                        ReLU'd for l < L (a_l), the logits z_L for l = L;
//   d_L:                 one block: softmax(z_L) - onehot(y[i]) (max subtracted first);
//   l = L..1:            backward (l > 1): one thread per column c of W_l,
//                        d_(l-1)[c] = (a_(l-1)[c] > 0) * sum_j W_l[j, c] d_l[j], reading the
//                        rows of W_l coalesced; launched before
//                        update: grid-stride over the elements of W_l and b_l with
//                        g = d_l[j] a_(l-1)[c] (W) or d_l[j] (b) computed on the fly, then
//                        prox_sgd (or sgd without anchors) of math.h.
// So the gradient of step i is taken at the parameters of the start of step i, as in the
// reference. 3L launches per example. float32 and float64; the math type is the storage type.
#include <vector>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "kernels/math.h"

namespace fastcl {
namespace cuda {
namespace {

namespace k = ::fastcl::kernels;
using detail::kThreads;

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }

template <typename M>
struct Sum {
  __device__ __forceinline__ M operator()(M a, M b) const { return a + b; }
};
template <typename M>
struct Max {
  __device__ __forceinline__ M operator()(M a, M b) const { return a > b ? a : b; }
};

// op over the 32 lanes of a warp; every lane gets the result.
template <typename M, typename Op>
__device__ __forceinline__ M warp_reduce(M v, const Op& op) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// op over the kThreads threads of a block; every thread gets the result. `partial` holds
// kWarpsPerBlock values of shared memory, free again when this returns.
template <typename M, typename Op>
__device__ __forceinline__ M block_reduce(M v, const Op& op, M* partial) {
  v = warp_reduce(v, op);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  v = partial[0];
  for (int w = 1; w < kWarpsPerBlock; ++w) v = op(v, partial[w]);
  __syncthreads();
  return v;
}

// out[j] = b[j] + sum_c w[j*cols + c] * in[c] for j in [0, rows), ReLU'd when `relu`: one warp
// per row (lanes stride the row, then a shuffle reduction).
template <typename M>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const M* __restrict__ w, const M* __restrict__ b, const M* __restrict__ in,
                   int64_t rows, int64_t cols, bool relu, M* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t j = first; j < rows; j += stride) {  // uniform per warp: the shuffles are safe
    const M* row = w + j * cols;
    M acc = 0;
    for (int64_t c = lane; c < cols; c += kWarp) acc += row[c] * in[c];
    acc = warp_reduce(acc, Sum<M>{});
    if (lane == 0) {
      const M z = acc + b[j];
      out[j] = (relu && z < M(0)) ? M(0) : z;
    }
  }
}

// delta[j] = softmax(logits)[j] - (j == y[i]) for j in [0, n), n >= 1: one block.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    softmax_delta_kernel(const M* __restrict__ logits, int64_t n, const int64_t* __restrict__ y,
                         int64_t i, M* __restrict__ delta) {
  __shared__ M partial[kWarpsPerBlock];
  M mx = M(-INFINITY);
  for (int64_t j = threadIdx.x; j < n; j += kThreads) mx = Max<M>{}(mx, logits[j]);
  mx = block_reduce(mx, Max<M>{}, partial);
  M sum = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) sum += exp_(logits[j] - mx);
  sum = block_reduce(sum, Sum<M>{}, partial);
  const int64_t label = y[i];
  for (int64_t j = threadIdx.x; j < n; j += kThreads)
    delta[j] = exp_(logits[j] - mx) / sum - (j == label ? M(1) : M(0));
}

// d_in[c] = (a_in[c] > 0) * sum_j w[j*cols + c] * d_out[j] for c in [0, cols): one thread per
// column, so a warp reads 32 consecutive elements of each row of w.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const M* __restrict__ w, const M* __restrict__ d_out,
                    const M* __restrict__ a_in, int64_t rows, int64_t cols,
                    M* __restrict__ d_in) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; c < cols;
       c += stride) {
    M acc = 0;
    if (a_in[c] > M(0))
      for (int64_t j = 0; j < rows; ++j) acc += w[j * cols + c] * d_out[j];
    d_in[c] = acc;
  }
}

// The new value of element e of a parameter p with gradient g: prox_sgd with its anchor a[e]
// and importance h[e] (kProx), or sgd (a, h unused).
template <typename M, bool kProx>
__device__ __forceinline__ M step(M p, M g, const M* a, const M* h, int64_t e, M lr, M prox) {
  if constexpr (kProx)
    return k::prox_sgd(p, g, a[e], h[e], lr, prox);
  else
    return k::sgd(p, g, lr);
}

// One step of the elements of w [rows, cols] and b [rows], the gradient d[j]*in[c] of w[j, c]
// and d[j] of b[j] formed on the fly. aw, hw, ab, hb: anchors and importance of w and b
// (nullptr without kProx).
template <typename M, bool kProx>
__global__ void __launch_bounds__(kThreads)
    update_kernel(M* __restrict__ w, M* __restrict__ b, const M* __restrict__ d,
                  const M* __restrict__ in, int64_t rows, int64_t cols, const M* __restrict__ aw,
                  const M* __restrict__ hw, const M* __restrict__ ab, const M* __restrict__ hb,
                  M lr, M prox) {
  const int64_t nw = rows * cols, total = nw + rows;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += stride) {
    if (e < nw) {
      const int64_t j = e / cols, c = e - j * cols;
      w[e] = step<M, kProx>(w[e], d[j] * in[c], aw, hw, e, lr, prox);
    } else {
      const int64_t j = e - nw;
      b[j] = step<M, kProx>(b[j], d[j], ab, hb, j, lr, prox);
    }
  }
}

// Blocks of a launch over `units` independent units of `per_block` each.
inline unsigned blocks_for(int64_t units, int64_t per_block) {
  return detail::grid_for((units + per_block - 1) / per_block);
}

template <typename M>
cudaError_t run_steps(int64_t num_layers, const int64_t* widths, void* const* params,
                      const M* x, const int64_t* y, int64_t k, const void* const* anchors,
                      const void* const* importance, M lr, M prox, M* workspace,
                      cudaStream_t stream) {
  const int64_t L = num_layers;
  // start[l - 1]: offset of layer l's slice (n_l elements) in act and in delta, l = 1..L.
  std::vector<int64_t> start(L + 1, 0);
  for (int64_t l = 1; l <= L; ++l) start[l] = start[l - 1] + widths[l];
  M* const act = workspace;               // a_1 .. a_(L-1), then the logits z_L
  M* const delta = workspace + start[L];  // d_1 .. d_L
  auto W = [&](int64_t l) { return static_cast<M*>(params[2 * l - 2]); };
  auto B = [&](int64_t l) { return static_cast<M*>(params[2 * l - 1]); };
  auto operand = [&](const void* const* list, int64_t i) {
    return list ? static_cast<const M*>(list[i]) : nullptr;
  };

  for (int64_t i = 0; i < k; ++i) {
    const M* const x_i = x + i * widths[0];
    // a_(l-1), the input of layer l
    auto input = [&](int64_t l) -> const M* { return l == 1 ? x_i : act + start[l - 2]; };

    for (int64_t l = 1; l <= L; ++l) {
      const int64_t rows = widths[l], cols = widths[l - 1];
      if (rows == 0) continue;
      forward_kernel<M><<<blocks_for(rows, kWarpsPerBlock), kThreads, 0, stream>>>(
          W(l), B(l), input(l), rows, cols, l < L, act + start[l - 1]);
    }
    softmax_delta_kernel<M><<<1, kThreads, 0, stream>>>(act + start[L - 1], widths[L], y, i,
                                                        delta + start[L - 1]);

    for (int64_t l = L; l >= 1; --l) {
      const int64_t rows = widths[l], cols = widths[l - 1];
      const M* const d = delta + start[l - 1];
      if (l > 1 && cols > 0)  // d_(l-1) from W_l before its update
        backward_kernel<M><<<blocks_for(cols, kThreads), kThreads, 0, stream>>>(
            W(l), d, input(l), rows, cols, delta + start[l - 2]);
      const int64_t total = rows * cols + rows;
      if (total == 0) continue;
      const unsigned blocks = blocks_for(total, kThreads);
      if (anchors)
        update_kernel<M, true><<<blocks, kThreads, 0, stream>>>(
            W(l), B(l), d, input(l), rows, cols, operand(anchors, 2 * l - 2),
            operand(importance, 2 * l - 2), operand(anchors, 2 * l - 1),
            operand(importance, 2 * l - 1), lr, prox);
      else
        update_kernel<M, false><<<blocks, kThreads, 0, stream>>>(
            W(l), B(l), d, input(l), rows, cols, nullptr, nullptr, nullptr, nullptr, lr, prox);
    }
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t mlp_prox_steps(DType dtype, int64_t num_layers, const int64_t* widths,
                           void* const* params, const void* x, const int64_t* y, int64_t k,
                           const void* const* anchors, const void* const* importance, double lr,
                           double prox, void* workspace, cudaStream_t stream) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat64) return cudaErrorInvalidValue;
  if ((anchors == nullptr) != (importance == nullptr)) return cudaErrorInvalidValue;
  if (k <= 0) return cudaSuccess;
  if (num_layers < 1) return cudaErrorInvalidValue;
  for (int64_t l = 0; l <= num_layers; ++l)
    if (widths[l] < 0) return cudaErrorInvalidValue;
  if (widths[num_layers] < 1) return cudaErrorInvalidValue;  // no class for a label
  if (dtype == DType::kFloat32)
    return run_steps<float>(num_layers, widths, params, static_cast<const float*>(x), y, k,
                            anchors, importance, float(lr), float(prox),
                            static_cast<float*>(workspace), stream);
  return run_steps<double>(num_layers, widths, params, static_cast<const double*>(x), y, k,
                           anchors, importance, lr, prox, static_cast<double*>(workspace),
                           stream);
}

}  // namespace cuda
}  // namespace fastcl
