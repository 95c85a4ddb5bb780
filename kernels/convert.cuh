// bf16 / fp16 <-> fp32 conversions the kernels share (device code only).
// from_float rounds to nearest even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace longtrain::kernels {

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

}  // namespace longtrain::kernels
