// CUDA kernels of the episodic-memory ops: ring insert, ring sample, reservoir insert.
// Slot arithmetic is csrc/kernels/math.h (ring_slot, ring_survives, reservoir_slot), shared
// with the CPU kernels. Rows are copied as raw bytes (any dtype), in the widest word (16, 8,
// 4, 2 or 1 bytes) that the row size and the base pointers allow. No host synchronisation.
#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "kernels/math.h"

namespace fastcl {
namespace cuda {
namespace {

namespace k = ::fastcl::kernels;
using detail::kThreads;

// ---- row copies ----

struct alignas(16) Word16 {
  uint4 v;
};

// dst row dst_row <- src row src_row, rows of `words` words of type W; one block per row.
template <typename W>
__device__ __forceinline__ void copy_row(void* dst, int64_t dst_row, const void* src,
                                         int64_t src_row, int64_t words) {
  W* d = static_cast<W*>(dst) + dst_row * words;
  const W* s = static_cast<const W*>(src) + src_row * words;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) d[w] = s[w];
}

// Word size (bytes) for copying rows of row_bytes bytes between two bases.
inline int word_bytes(int64_t row_bytes, const void* a, const void* b) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         static_cast<uintptr_t>(row_bytes);
  for (int w = 16; w > 1; w /= 2)
    if ((bits & static_cast<uintptr_t>(w - 1)) == 0) return w;
  return 1;
}

// Calls f(W{}) with W the copy word of `bytes` bytes.
template <typename F>
void with_word(int bytes, const F& f) {
  switch (bytes) {
    case 16:
      f(Word16{});
      break;
    case 8:
      f(uint64_t{});
      break;
    case 4:
      f(uint32_t{});
      break;
    case 2:
      f(uint16_t{});
      break;
    default:
      f(uint8_t{});
      break;
  }
}

// ---- ring insert ----

// For every example i: rank = earlier examples of its class in the batch, later = examples of
// its class after it. slot[i] = its row if it survives the batch, else -1; add[i] = number of
// examples of its class in the batch if i is the last of them, else 0. y is walked in tiles
// staged in shared memory, so every block reads the labels once per tile.
__global__ void __launch_bounds__(kThreads)
    ring_slots_kernel(const int64_t* __restrict__ counts, const int64_t* __restrict__ y,
                      int64_t batch, int64_t num_classes, int64_t m, int64_t task,
                      int64_t* __restrict__ slot, int64_t* __restrict__ add) {
  __shared__ int64_t tile[kThreads];
  // Every thread of a block runs the same number of outer iterations (barriers inside).
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < batch;
       base += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool active = i < batch;
    const int64_t c = active ? y[i] : -1;
    int64_t rank = 0, later = 0;
    for (int64_t j0 = 0; j0 < batch; j0 += kThreads) {
      __syncthreads();
      if (j0 + threadIdx.x < batch) tile[threadIdx.x] = y[j0 + threadIdx.x];
      __syncthreads();
      const int64_t len = batch - j0 < kThreads ? batch - j0 : kThreads;
      if (active) {
        for (int64_t jj = 0; jj < len; ++jj) {
          if (tile[jj] == c) {
            const int64_t j = j0 + jj;
            rank += j < i;
            later += j > i;
          }
        }
      }
    }
    if (active) {
      const int64_t count = counts[task * num_classes + c];
      slot[i] = k::ring_survives(later, m) ? k::ring_slot(task, c, num_classes, m, count, rank)
                                           : int64_t(-1);
      add[i] = later == 0 ? rank + 1 : 0;
    }
  }
}

// Copies the surviving rows and advances the counts (after every slot was computed: the
// counts are read by ring_slots_kernel). One block per example, grid-stride.
template <typename W>
__global__ void __launch_bounds__(kThreads)
    ring_copy_kernel(void* data, int64_t* __restrict__ counts, const void* x,
                     const int64_t* __restrict__ y, int64_t batch, int64_t words,
                     int64_t num_classes, int64_t task, const int64_t* __restrict__ slot,
                     const int64_t* __restrict__ add) {
  for (int64_t i = blockIdx.x; i < batch; i += gridDim.x) {
    const int64_t s = slot[i];
    if (s >= 0) copy_row<W>(data, s, x, i, words);
    if (threadIdx.x == 0 && add[i] > 0) counts[task * num_classes + y[i]] += add[i];
  }
}

// ---- ring sample ----

// Inclusive block-wide scan of one value per thread (blockDim.x == kThreads).
__device__ __forceinline__ int64_t block_inclusive_scan(int64_t v, int64_t* warp_sums,
                                                        int64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    constexpr int kWarps = kThreads / 32;
    int64_t s = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < kWarps; o <<= 1) {
      const int64_t u = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += u;
    }
    if (lane < kWarps) warp_sums[lane] = s;  // inclusive prefix over warps
    if (lane == kWarps - 1) *total = s;
  }
  __syncthreads();
  if (warp > 0) v += warp_sums[warp - 1];
  return v;
}

// ends[r] = sum of fills of rings 0..r, fill = min(counts, m) for rings of selected tasks.
// One block walks all rings in tiles of kThreads (counts is small: tasks x classes).
__global__ void __launch_bounds__(kThreads)
    ring_fill_scan_kernel(const int64_t* __restrict__ counts, const uint8_t* __restrict__ mask,
                          int64_t rings, int64_t num_classes, int64_t m,
                          int64_t* __restrict__ ends) {
  __shared__ int64_t warp_sums[kThreads / 32];
  __shared__ int64_t tile_total;
  int64_t carry = 0;
  for (int64_t base = 0; base < rings; base += kThreads) {
    const int64_t r = base + threadIdx.x;
    int64_t fill = 0;
    if (r < rings && mask[r / num_classes]) {
      const int64_t c = counts[r];
      fill = c < 0 ? 0 : (c < m ? c : m);  // negative counts (rejected on the CPU) count as empty
    }
    const int64_t v = block_inclusive_scan(fill, warp_sums, &tile_total);
    if (r < rings) ends[r] = carry + v;
    carry += tile_total;
    __syncthreads();  // tile_total and warp_sums are rewritten by the next tile
  }
}

// out[i] = row of draw k = floor(u[i] * total): ring = first r with ends[r] > k (searchsorted
// right), offset = k - ends[ring - 1].
__global__ void __launch_bounds__(kThreads)
    ring_draw_kernel(const int64_t* __restrict__ ends, int64_t rings, int64_t m,
                     const double* __restrict__ u, int64_t n, int64_t* __restrict__ out) {
  const int64_t total = ends[rings - 1];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (total <= 0) {
      out[i] = -1;
      continue;
    }
    int64_t kk = static_cast<int64_t>(floor(u[i] * static_cast<double>(total)));
    if (kk > total - 1) kk = total - 1;
    int64_t lo = 0, hi = rings - 1;  // first r with ends[r] > kk; ends[rings-1] = total > kk
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (ends[mid] > kk)
        hi = mid;
      else
        lo = mid + 1;
    }
    const int64_t before = lo > 0 ? ends[lo - 1] : 0;
    out[i] = lo * m + (kk - before);
  }
}

// ---- reservoir insert ----

// slots[i] = reservoir_slot(n_seen + i, u[i], capacity); the winner entry of the slot is reset
// (winner holds 1 + the index of the winning example, 0 before any).
__global__ void __launch_bounds__(kThreads)
    reservoir_slots_kernel(const double* __restrict__ u, int64_t batch, int64_t n_seen,
                           int64_t capacity, int64_t* __restrict__ slots,
                           int64_t* __restrict__ winner) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < batch;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = k::reservoir_slot(n_seen + i, u[i], capacity);
    slots[i] = s;
    if (s >= 0) winner[s] = 0;
  }
}

// winner[slot] = the last example of the batch that drew the slot.
__global__ void __launch_bounds__(kThreads)
    reservoir_winner_kernel(const int64_t* __restrict__ slots, int64_t batch,
                            int64_t* __restrict__ winner) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < batch;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = slots[i];
    if (s >= 0)
      atomicMax(reinterpret_cast<unsigned long long*>(winner + s),
                static_cast<unsigned long long>(i) + 1ull);
  }
}

// Winners write their row, label and task. One block per example, grid-stride.
template <typename W>
__global__ void __launch_bounds__(kThreads)
    reservoir_copy_kernel(void* data, int64_t* __restrict__ labels, int64_t* __restrict__ tasks,
                          const void* x, const int64_t* __restrict__ y, int64_t batch,
                          int64_t words, int64_t task, const int64_t* __restrict__ slots,
                          const int64_t* __restrict__ winner) {
  for (int64_t i = blockIdx.x; i < batch; i += gridDim.x) {
    const int64_t s = slots[i];
    if (s < 0 || winner[s] != i + 1) continue;
    copy_row<W>(data, s, x, i, words);
    if (threadIdx.x == 0) {
      labels[s] = y[i];
      tasks[s] = task;
    }
  }
}

}  // namespace

cudaError_t ring_insert(void* data, int64_t* counts, int64_t num_classes, int64_t m,
                        const void* x, const int64_t* y, int64_t batch, int64_t row_bytes,
                        int64_t task, int64_t* workspace, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (num_classes < 1 || m < 1 || row_bytes < 0 || task < 0) return cudaErrorInvalidValue;
  int64_t* slot = workspace;
  int64_t* add = workspace + batch;
  const unsigned blocks = detail::grid_for((batch + kThreads - 1) / kThreads);
  ring_slots_kernel<<<blocks, kThreads, 0, stream>>>(counts, y, batch, num_classes, m, task, slot,
                                                     add);
  const int wb = word_bytes(row_bytes, data, x);
  with_word(wb, [&](auto tag) {
    using W = decltype(tag);
    ring_copy_kernel<W><<<detail::grid_for(batch), kThreads, 0, stream>>>(
        data, counts, x, y, batch, row_bytes / wb, num_classes, task, slot, add);
  });
  return cudaGetLastError();
}

cudaError_t ring_sample(const int64_t* counts, const uint8_t* task_mask, int64_t num_tasks,
                        int64_t num_classes, int64_t m, const double* u, int64_t n, int64_t* out,
                        int64_t* workspace, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t rings = num_tasks * num_classes;
  if (rings < 1 || m < 1) return cudaErrorInvalidValue;
  ring_fill_scan_kernel<<<1, kThreads, 0, stream>>>(counts, task_mask, rings, num_classes, m,
                                                    workspace);
  ring_draw_kernel<<<detail::grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      workspace, rings, m, u, n, out);
  return cudaGetLastError();
}

cudaError_t reservoir_insert(void* data, int64_t* labels, int64_t* tasks, int64_t capacity,
                             const void* x, const int64_t* y, int64_t batch, int64_t row_bytes,
                             int64_t task, int64_t n_seen, const double* u, int64_t* slots,
                             int64_t* workspace, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (capacity < 1 || row_bytes < 0 || n_seen < 0) return cudaErrorInvalidValue;
  const unsigned blocks = detail::grid_for((batch + kThreads - 1) / kThreads);
  reservoir_slots_kernel<<<blocks, kThreads, 0, stream>>>(u, batch, n_seen, capacity, slots,
                                                          workspace);
  reservoir_winner_kernel<<<blocks, kThreads, 0, stream>>>(slots, batch, workspace);
  const int wb = word_bytes(row_bytes, data, x);
  with_word(wb, [&](auto tag) {
    using W = decltype(tag);
    reservoir_copy_kernel<W><<<detail::grid_for(batch), kThreads, 0, stream>>>(
        data, labels, tasks, x, y, batch, row_bytes / wb, task, slots, workspace);
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastcl
