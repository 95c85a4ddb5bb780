// Device helpers of the AFT scan kernels: the running (max, num, den) state of
// one channel, its merge, and two-channel loads/stores of bf16/fp16 pairs.
//
// State: num = Σ exp(k_s - max) v_s, den = Σ exp(k_s - max), max = max_s k_s
// over the positions seen; empty = (-inf, 0, 0). Every exponent is <= 0, and
// the argmax term enters with weight exp(0) = 1, so den >= 1 once non-empty:
// no overflow for any range of keys, never 0/0. One exp per merge: the larger
// max wins and the smaller side is scaled by exp(-|difference|).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

namespace longtrain::kernels::aft {

struct ScanState {
  float m, n, s;  // max, num, den
};

__device__ __forceinline__ ScanState empty_state() { return {-INFINITY, 0.f, 0.f}; }

// state ⊕ (m2, n2, s2), where the right-hand side is not empty (m2 finite).
__device__ __forceinline__ void merge(ScanState& a, float m2, float n2, float s2) {
  const float diff = m2 - a.m;               // +inf when a is empty
  const float e = __expf(-fabsf(diff));      // 0 when a is empty
  if (diff > 0.f) {
    a.n = fmaf(a.n, e, n2);
    a.s = fmaf(a.s, e, s2);
    a.m = m2;
  } else {
    a.n = fmaf(n2, e, a.n);
    a.s = fmaf(s2, e, a.s);
  }
}

// One position: k, v of this channel.
__device__ __forceinline__ void scan_add(ScanState& a, float k, float v) { merge(a, k, v, 1.f); }

// a ⊕ b for any two states (either may be empty).
__device__ __forceinline__ void merge_state(ScanState& a, const ScanState& b) {
  if (b.m != -INFINITY) merge(a, b.m, b.n, b.s);
}

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// Two adjacent channels of a bf16 / fp16 row, as one 4-byte access.
template <typename T>
struct Pair;

template <>
struct Pair<__nv_bfloat16> {
  using V = __nv_bfloat162;
  static __device__ __forceinline__ float2 load(const void* base, int64_t offset) {
    return __bfloat1622float2(*reinterpret_cast<const V*>(static_cast<const __nv_bfloat16*>(base) + offset));
  }
  // The pair as its raw 4 bytes (half the registers of a float2 while held).
  static __device__ __forceinline__ V load_raw(const void* base, int64_t offset) {
    return *reinterpret_cast<const V*>(static_cast<const __nv_bfloat16*>(base) + offset);
  }
  static __device__ __forceinline__ float2 unpack(V x) { return __bfloat1622float2(x); }
  static __device__ __forceinline__ void store(void* base, int64_t offset, float a, float b) {
    *reinterpret_cast<V*>(static_cast<__nv_bfloat16*>(base) + offset) = __floats2bfloat162_rn(a, b);
  }
};

template <>
struct Pair<__half> {
  using V = __half2;
  static __device__ __forceinline__ float2 load(const void* base, int64_t offset) {
    return __half22float2(*reinterpret_cast<const V*>(static_cast<const __half*>(base) + offset));
  }
  static __device__ __forceinline__ V load_raw(const void* base, int64_t offset) {
    return *reinterpret_cast<const V*>(static_cast<const __half*>(base) + offset);
  }
  static __device__ __forceinline__ float2 unpack(V x) { return __half22float2(x); }
  static __device__ __forceinline__ void store(void* base, int64_t offset, float a, float b) {
    *reinterpret_cast<V*>(static_cast<__half*>(base) + offset) = __floats2half2_rn(a, b);
  }
};

// Thread -> (batch, chunk, channel pair) for the per-chunk kernels: consecutive
// threads take consecutive channel pairs of one row, so a warp's loads are
// contiguous.
struct ChunkThread {
  int b, chunk, c;  // c: the first of the two channels
  bool valid;
};

__device__ __forceinline__ ChunkThread chunk_thread(int B, int n_chunks, int d) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int pairs = d / 2;
  ChunkThread t;
  t.c = static_cast<int>(g % pairs) * 2;
  const int64_t rest = g / pairs;
  t.chunk = static_cast<int>(rest % n_chunks);
  t.b = static_cast<int>(rest / n_chunks);
  t.valid = t.b < B;
  return t;
}

}  // namespace longtrain::kernels::aft
