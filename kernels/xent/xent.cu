// Softmax cross-entropy, forward and gradient fused (params.h), the way llm.c's
// fused classifier does it: one CTA per row; pass 1 reads the row (16-byte
// loads) for its running max and sum of exponentials in fp32 and reduces them
// over the CTA to lse; pass 2 reads the row again (from L2) and writes
// softmax - onehot in the logits' dtype; the row's loss is lse - logit[target].
// This replaces, per chunk of the loss (model/chunked_cross_entropy.cpp), an
// fp32 copy of the logits, log_softmax, exp and the cast back: ~27 ms of the
// 134M model's 178 ms step on the H100 (bench/results/profile_134m_2026-11-24_h100).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/convert.cuh"
#include "kernels/xent/params.h"

namespace longtrain::kernels::xent {
namespace {

constexpr int kThreads = 512;

using kernels::from_float;
using kernels::to_float;

// (m, s): s = Σ exp(x - m). Merging keeps the larger max; an empty side (s = 0) adds nothing.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  s = (s == 0.f ? 0.f : s * __expf(m - mm)) + (s2 == 0.f ? 0.f : s2 * __expf(m2 - mm));
  m = mm;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_xent_kernel(const XentParams p) {
  __shared__ float red_m[kThreads / 32], red_s[kThreads / 32];
  __shared__ float lse_s;
  const int64_t row = blockIdx.x;
  const int V = p.V, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* x = static_cast<const T*>(p.logits) + row * V;
  T* dx = static_cast<T*>(p.dlogits) + row * V;
  // Rows 16-byte aligned: 8 values per load.
  const bool vec = V % 8 == 0 && reinterpret_cast<uintptr_t>(p.logits) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.dlogits) % 16 == 0;

  float m = -INFINITY, s = 0.f;
  if (vec) {
    for (int i = tid * 8; i < V; i += kThreads * 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(x + i);
      const T* e = reinterpret_cast<const T*>(&raw);
      float v[8], mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, v[j] = to_float(e[j]));
      float part = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) part += __expf(v[j] - mx);
      merge(m, s, mx, part);
    }
  } else {
    for (int i = tid; i < V; i += kThreads) merge(m, s, to_float(x[i]), 1.f);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffff, m, off), s2 = __shfl_xor_sync(0xffffffff, s, off);
    merge(m, s, m2, s2);
  }
  if (lane == 0) {
    red_m[warp] = m;
    red_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / 32 ? red_m[lane] : -INFINITY;
    s = lane < kThreads / 32 ? red_s[lane] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffff, m, off), s2 = __shfl_xor_sync(0xffffffff, s, off);
      merge(m, s, m2, s2);
    }
    if (lane == 0) lse_s = m + __logf(s);
  }
  __syncthreads();
  const float lse = lse_s;
  const int64_t t = p.targets[row];
  const bool counted = t >= 0 && t < V;
  if (tid == 0) p.loss[row] = counted ? lse - to_float(x[t]) : 0.f;

  if (vec) {
    for (int i = tid * 8; i < V; i += kThreads * 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(x + i);
      const T* e = reinterpret_cast<const T*>(&raw);
      uint4 out;
      T* o = reinterpret_cast<T*>(&out);
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = from_float<T>(__expf(to_float(e[j]) - lse) - (i + j == t ? 1.f : 0.f));
      *reinterpret_cast<uint4*>(dx + i) = out;
    }
  } else {
    for (int i = tid; i < V; i += kThreads) dx[i] = from_float<T>(__expf(to_float(x[i]) - lse) - (i == t ? 1.f : 0.f));
  }
}

}  // namespace

void softmax_xent(const XentParams& p, DType dtype, void* stream) {
  if (p.C == 0) return;
  if (p.V < 1 || p.C > 2147483647LL) throw std::invalid_argument("softmax_xent: needs V >= 1 and C < 2^31 rows");
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(p.C));
  if (dtype == DType::kBFloat16) softmax_xent_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(p);
  else softmax_xent_kernel<__half><<<grid, kThreads, 0, s>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("softmax_xent_kernel: ") + cudaGetErrorString(err));
}

}  // namespace longtrain::kernels::xent
