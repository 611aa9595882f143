// Host launchers of the fastcl CUDA kernels: raw device pointers and a cudaStream_t, no torch.
//
// Plain C++ on the calling side: csrc/cuda/glue.cpp (the torch glue, CUDA dispatch key) and the
// standalone CUDA tests include this header; the kernels themselves live in csrc/cuda/*.cu and
// compile with nvcc alone.
//
// Conventions of every launcher:
// * every pointer is a device pointer to contiguous memory on the current CUDA device;
// * work is enqueued on `stream`, nothing synchronises with the host;
// * the return value is cudaGetLastError() after the last launch (cudaSuccess when there was
//   nothing to do); the caller turns it into an exception;
// * scalars come in double and are cast once to the math type (float for float / half /
//   bfloat16 storage, double for double), as the CPU kernels do;
// * list ops take, per list, an array of `n` pointers (tensor i of every list has numel[i]
//   elements); a written tensor may be the very same memory as an input of its index
//   (in place), never a partial overlap. Many tensors go into one launch (see list_ops.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastcl {
namespace cuda {

// Storage dtype of a list op; the math type is float for kFloat32 / kFloat16 / kBFloat16.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// ---- parameter updates (csrc/cuda/list_ops.cu) ----

// out[i] <- (params - lr*grads + prox*h*anchors) / (prox*h + 1)   (EMCL Eq. 16, 17, 21).
// anchors == importance == nullptr: plain SGD, out[i] <- params - lr*grads.
// out may be params (prox_sgd_) or fresh tensors (prox_sgd).
cudaError_t prox_sgd(DType dtype, int64_t n, const int64_t* numel, void* const* out,
                     const void* const* params, const void* const* grads,
                     const void* const* anchors, const void* const* importance, double lr,
                     double prox, cudaStream_t stream);

// importance <- decay*importance + (1-decay)*|grads*params|   (EMCL Eq. 7, 13).
cudaError_t taylor_importance(DType dtype, int64_t n, const int64_t* numel, void* const* importance,
                              const void* const* grads, const void* const* params, double decay,
                              cudaStream_t stream);

// EMCL meta step (Eq. 10, 8, 7, 13): params, importance, meta_lrs updated in place.
// lr_mode 0: paper, 1: stabilised, 2: inverse (see fastcl/ops/reference.py).
cudaError_t emcl_meta_step(DType dtype, int64_t n, const int64_t* numel, void* const* params,
                           const void* const* fast_params, void* const* importance,
                           void* const* meta_lrs, const void* const* grads, double lam,
                           double decay, double r, int lr_mode, double alpha0, double eps,
                           cudaStream_t stream);

// delta = meta_lr*(mean_t thetas[i][t] - phi[i]); phi[i] += delta; thetas[i][t] += delta if
// shift. phi[i] has numel[i] elements; thetas[i] has learners[i] >= 1 consecutive copies of
// numel[i] elements each (a contiguous [T, *S] tensor).
cudaError_t trajectory_shift(DType dtype, int64_t n, const int64_t* numel, const int64_t* learners,
                             void* const* phi, void* const* thetas, double meta_lr, bool shift,
                             cudaStream_t stream);

// ---- MLP inner loop (csrc/cuda/mlp_ops.cu) ----

// mlp_prox_steps_: for i = 0..k-1 in order, the cross-entropy gradient of the ReLU MLP on the
// single example (x[i], y[i]) at the current params, then the prox_sgd step above with it
// (sgd when anchors == importance == nullptr) applied to every parameter in place.
//   dtype: kFloat32 or kFloat64 only (math type = storage type; others: cudaErrorInvalidValue);
//   widths: n_0 .. n_L (num_layers + 1 entries, host memory), n_L >= 1;
//   params: 2*num_layers pointers W_1, b_1, ..., W_L, b_L, W_l [n_l, n_(l-1)] row-major, b_l
//   [n_l]; anchors, importance: the same layout (or both nullptr); x: [k, n_0]; y: [k] labels in
//   [0, n_L) (checked by the caller). No argument may overlap params.
//   workspace: 2*(n_1 + ... + n_L) elements of dtype (activations and deltas; no
//   initialisation needed).
// 3*num_layers launches per example.
cudaError_t mlp_prox_steps(DType dtype, int64_t num_layers, const int64_t* widths,
                           void* const* params, const void* x, const int64_t* y, int64_t k,
                           const void* const* anchors, const void* const* importance, double lr,
                           double prox, void* workspace, cudaStream_t stream);

// ---- episodic memory (csrc/cuda/memory_ops.cu) ----

// Per-(task, class) FIFO rings of m rows; equal to inserting the batch one example at a time.
//   data: [num_tasks*num_classes*m rows of row_bytes bytes]; counts: [num_tasks, num_classes];
//   x: [batch rows of row_bytes bytes]; y: [batch] labels in [0, num_classes) (checked by the
//   caller); workspace: 2*batch int64 scratch.
// Only the examples that survive the batch are written; counts[task, c] grows by the number of
// examples of class c in the batch. The rank of each example among the earlier examples of its
// class in the batch is counted on the device (quadratic in the batch size, tiled in shared
// memory: a batch of 4096 is 16M comparisons).
cudaError_t ring_insert(void* data, int64_t* counts, int64_t num_classes, int64_t m,
                        const void* x, const int64_t* y, int64_t batch, int64_t row_bytes,
                        int64_t task, int64_t* workspace, cudaStream_t stream);

// n row indices drawn uniformly (with replacement) from the filled slots of the selected tasks,
// without a host synchronisation: fills min(counts, m) of the selected rings, their inclusive
// prefix sums (workspace: num_tasks*num_classes int64), then a binary search per draw
// k = floor(u*total) (u: n uniforms in [0, 1), double). task_mask: [num_tasks] bytes, nonzero
// for a selected task. When the selection holds no example (total == 0) every output is -1:
// the caller checks emptiness beforehand with host-side counters. Negative counts (rejected by
// the CPU op, which reads them) count as empty rings.
cudaError_t ring_sample(const int64_t* counts, const uint8_t* task_mask, int64_t num_tasks,
                        int64_t num_classes, int64_t m, const double* u, int64_t n, int64_t* out,
                        int64_t* workspace, cudaStream_t stream);

// Algorithm R for a batch: example i is stream example s = n_seen + i; its slot is
// kernels::reservoir_slot(s, u[i], capacity) (-1: not kept), written to slots[i]. When several
// examples of the batch land on one slot the last one wins, as one by one. data rows of
// row_bytes bytes, labels and tasks [capacity] int64 are written for the winners.
// workspace: capacity int64 scratch (no initialisation needed).
cudaError_t reservoir_insert(void* data, int64_t* labels, int64_t* tasks, int64_t capacity,
                             const void* x, const int64_t* y, int64_t batch, int64_t row_bytes,
                             int64_t task, int64_t n_seen, const double* u, int64_t* slots,
                             int64_t* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastcl
