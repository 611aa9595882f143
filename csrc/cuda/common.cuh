// Device helpers shared by the fastcl CUDA kernels: storage <-> math conversions, aligned
// vectors, launch geometry. nvcc only; no torch.
//
// The conversions use the explicit intrinsics (__half2float, __float2half_rn, ...), so the
// kernels compile under torch's -D__CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_HALF_OPERATORS__ /
// __CUDA_NO_BFLOAT16_CONVERSIONS__ flags as well as without them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace fastcl {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;  // threads per block of every kernel

// Math type of a storage type: float for float / half / bfloat16, double for double.
template <typename S>
struct MathType {
  using type = float;
};
template <>
struct MathType<double> {
  using type = double;
};
template <typename S>
using math_t = typename MathType<S>::type;

__device__ __forceinline__ float to_math(float v) { return v; }
__device__ __forceinline__ double to_math(double v) { return v; }
__device__ __forceinline__ float to_math(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_math(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename S>
__device__ __forceinline__ S from_math(math_t<S> v);
template <>
__device__ __forceinline__ float from_math<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_math<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_math<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_math<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 16 bytes of S: one 128-bit load or store.
template <typename S>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(S);
  S v[kSize];
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Streaming multiprocessors of the current device (cached per device; no synchronisation).
inline int sm_count() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (dev >= 0 && dev < 64) {
    const int c = cache[dev].load(std::memory_order_relaxed);
    if (c > 0) return c;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms < 1)
    sms = 1;
  if (dev >= 0 && dev < 64) cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

// Blocks of a grid-stride launch over `work` units: enough to fill the device (8 resident
// blocks of kThreads per SM), never more than there is work.
inline unsigned grid_for(int64_t work) {
  const int64_t cap = static_cast<int64_t>(sm_count()) * (2048 / kThreads);
  const int64_t g = work < cap ? work : cap;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

}  // namespace detail
}  // namespace cuda
}  // namespace fastcl
