// LayerNorm / RMSNorm with the residual add fused in, forward and backward
// (params.h), the llm.c way: one warp per row, the row in registers (16-byte
// loads), statistics in fp32 by warp shuffles.
//
// Forward: s = x + branch in fp32, rounded to the dtype and stored (the
// residual stream's next value), then normalised from the rounded s (what the
// unfused add + layer_norm computes): mean, then the variance about it from
// registers (two passes, no cancellation), y = (s - mean) * rstd * w + b.
// Backward: g = dy * w, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) +
// dsum, where dsum is the gradient that reached s through the residual; the
// weight and bias gradients are summed per warp in shared memory, per CTA
// into partials, and over CTAs by a second kernel, each in a fixed order
// (deterministic, no atomics).
//
// Replaces, per norm of the 134M model's step, LibTorch's layer_norm kernel,
// its separate residual add, its GammaBeta backward and the autograd add of
// the residual's two gradients (bench/results/profile_134m_2026-11-24_h100:
// ~16 ms of the 158 ms step).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/convert.cuh"
#include "kernels/norm/params.h"

namespace longtrain::kernels::norm {
namespace {

using kernels::from_float;
using kernels::load8;
using kernels::store8;
using kernels::to_float;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffff, v, off);
  return v;
}

__device__ __forceinline__ void load4x2(const float* a, const float* b, float (&v)[8]) {
  const float4 x = *reinterpret_cast<const float4*>(a), y = *reinterpret_cast<const float4*>(b);
  v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w, v[4] = y.x, v[5] = y.y, v[6] = y.z, v[7] = y.w;
}

__device__ __forceinline__ void store4x2(float* a, float* b, const float (&v)[8]) {
  *reinterpret_cast<float4*>(a) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4*>(b) = make_float4(v[4], v[5], v[6], v[7]);
}

// Lane `lane`'s vector i covers columns [(i * 32 + lane) * 8, +8).
__device__ __forceinline__ int column(int i, int lane) { return (i * 32 + lane) * 8; }

// Where the backward keeps column c's sums in shared memory: the 8 columns of
// a lane's vector i as two float4 at slots (2i + h) * 32 + lane, so that a
// warp's float4 accesses are consecutive (no bank conflicts; at 8 floats per
// lane they were 2-way). Inverse of `slot_column`.
__device__ __forceinline__ int slot(int i, int h, int lane) { return ((2 * i + h) * 32 + lane) * 4; }
__device__ __forceinline__ int slot_column(int s) {
  const int e = s & 3, lane = (s >> 2) & 31, ih = s >> 7;
  return column(ih >> 1, lane) + (ih & 1) * 4 + e;
}

template <typename T, int V>
__global__ void __launch_bounds__(kWarps * 32) norm_fwd_kernel(const NormFwdParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= p.N) return;
  const int D = p.D;
  const T* x = static_cast<const T*>(p.x) + row * D;
  float v[V][8];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int c = column(i, lane);
    if (c < D) {
      load8(x + c, v[i]);
      if (p.branch) {
        float b[8];
        load8(static_cast<const T*>(p.branch) + row * D + c, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = to_float(from_float<T>(v[i][j] + b[j]));
        store8(static_cast<T*>(p.sum) + row * D + c, v[i]);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) s += v[i][j];
    }
  }
  const float mean = p.rms ? 0.f : warp_sum(s) / D;
  float q = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    if (column(i, lane) < D) {
#pragma unroll
      for (int j = 0; j < 8; ++j) q += (v[i][j] - mean) * (v[i][j] - mean);
    }
  }
  const float rstd = rsqrtf(warp_sum(q) / D + p.eps);
  if (lane == 0) {
    if (p.mean) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }
  T* y = static_cast<T*>(p.y) + row * D;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int c = column(i, lane);
    if (c < D) {
      float w[8], b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      load8(p.weight + c, w);
      if (p.bias) load8(p.bias + c, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = (v[i][j] - mean) * rstd * w[j] + b[j];
      store8(y + c, v[i]);
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBwdWarps * 32) norm_bwd_kernel(const NormBwdParams p) {
  // [kBwdWarps][2][S]: each warp's sums of dy * xhat and dy over its rows in
  // the `slot` layout, S = 256 V (a lane owns its slots: no atomics), summed
  // over the warps at the end.
  extern __shared__ float acc[];
  constexpr int S = 256 * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = p.D;
  float* mine = acc + warp * 2 * S;
  const float zero[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < V; ++i) {  // each lane zeroes the slots it owns: no other lane touches them until the end
    store4x2(mine + slot(i, 0, lane), mine + slot(i, 1, lane), zero);
    store4x2(mine + S + slot(i, 0, lane), mine + S + slot(i, 1, lane), zero);
  }
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kBwdWarps + warp; row < p.N;
       row += static_cast<int64_t>(gridDim.x) * kBwdWarps) {
    const T* x = static_cast<const T*>(p.x) + row * D;
    const T* dy = static_cast<const T*>(p.dy) + row * D;
    const float mean = p.mean ? p.mean[row] : 0.f, rstd = p.rstd[row];
    // Every load of the row first (x, dy and dsum: one memory round trip).
    float xh[V][8], g[V][8], r[V][8];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int c = column(i, lane);
      if (c < D) {
        load8(x + c, xh[i]);
        load8(dy + c, g[i]);
        if (p.dsum) load8(static_cast<const T*>(p.dsum) + row * D + c, r[i]);
      }
    }
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int c = column(i, lane);
      if (c < D) {
        float w[8], sw[8], sb[8];
        load8(p.weight + c, w);  // from L1
        load4x2(mine + slot(i, 0, lane), mine + slot(i, 1, lane), sw);
        load4x2(mine + S + slot(i, 0, lane), mine + S + slot(i, 1, lane), sb);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          xh[i][j] = (xh[i][j] - mean) * rstd;
          sw[j] += g[i][j] * xh[i][j];
          sb[j] += g[i][j];
          g[i][j] *= w[j];
          sg += g[i][j];
          sgx += g[i][j] * xh[i][j];
        }
        store4x2(mine + slot(i, 0, lane), mine + slot(i, 1, lane), sw);
        store4x2(mine + S + slot(i, 0, lane), mine + S + slot(i, 1, lane), sb);
      }
    }
    const float mg = p.rms ? 0.f : warp_sum(sg) / D, mgx = warp_sum(sgx) / D;
    T* dx = static_cast<T*>(p.dx) + row * D;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int c = column(i, lane);
      if (c < D) {
#pragma unroll
        for (int j = 0; j < 8; ++j) r[i][j] = (p.dsum ? r[i][j] : 0.f) + rstd * (g[i][j] - mg - xh[i][j] * mgx);
        store8(dx + c, r[i]);
      }
    }
  }
  __syncthreads();
  float* out = p.partial + static_cast<int64_t>(blockIdx.x) * 2 * D;
  for (int k = threadIdx.x; k < 2 * S; k += blockDim.x) {
    const int c = slot_column(k % S);
    if (c >= D) continue;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kBwdWarps; ++w) s += acc[w * 2 * S + k];
    out[(k < S ? 0 : D) + c] = s;
  }
}

// dweight[c] = Σ_b partial[b][0][c], dbias[c] = Σ_b partial[b][1][c]: 32
// columns per CTA, 16 threads down the blocks each, summed in a fixed order.
constexpr int kReduceRows = 16;
__global__ void __launch_bounds__(32 * kReduceRows) norm_bwd_reduce_kernel(const NormBwdParams p, int blocks) {
  __shared__ float part[kReduceRows][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (c < 2 * p.D) {
    for (int b = threadIdx.y; b < blocks; b += kReduceRows) s += p.partial[static_cast<int64_t>(b) * 2 * p.D + c];
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= 2 * p.D) return;
  for (int k = 1; k < kReduceRows; ++k) s += part[k][threadIdx.x];
  if (c < p.D) p.dweight[c] = s;
  else if (p.dbias) p.dbias[c - p.D] = s;
}

void check(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <typename T>
void forward_typed(const NormFwdParams& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.N + kWarps - 1) / kWarps)), block(kWarps * 32);
  switch ((p.D + 255) / 256) {
#define LT_NORM_FWD(V) \
  case V: norm_fwd_kernel<T, V><<<grid, block, 0, s>>>(p); break;
    LT_NORM_FWD(1) LT_NORM_FWD(2) LT_NORM_FWD(3) LT_NORM_FWD(4)
    LT_NORM_FWD(5) LT_NORM_FWD(6) LT_NORM_FWD(7) LT_NORM_FWD(8)
#undef LT_NORM_FWD
  }
  check("norm_fwd_kernel");
}

template <typename T, int V>
size_t backward_smem() {
  const size_t smem = static_cast<size_t>(kBwdWarps) * 2 * 256 * V * sizeof(float);
  static const bool once = [smem] {  // up to 64 KiB at D = 2048: above the default 48
    cudaFuncSetAttribute(norm_bwd_kernel<T, V>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(kBwdWarps * 2 * kMaxD * sizeof(float)));
    return true;
  }();
  (void)once;
  return smem;
}

template <typename T, int V>
int occupancy() {  // CTAs per SM: fixed per kernel, asked once, not on every backward
  static const int per_sm = [] {
    int n = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, norm_bwd_kernel<T, V>, kBwdWarps * 32, backward_smem<T, V>());
    return n;
  }();
  return per_sm;
}

template <typename T>
int backward_blocks_typed(int D) {
  switch ((D + 255) / 256) {
#define LT_NORM_OCC(V) \
  case V: return occupancy<T, V>();
    LT_NORM_OCC(1) LT_NORM_OCC(2) LT_NORM_OCC(3) LT_NORM_OCC(4)
    LT_NORM_OCC(5) LT_NORM_OCC(6) LT_NORM_OCC(7) LT_NORM_OCC(8)
#undef LT_NORM_OCC
  }
  return 1;
}

template <typename T>
void backward_typed(const NormBwdParams& p, int blocks, cudaStream_t s) {
  switch ((p.D + 255) / 256) {
#define LT_NORM_BWD(V) \
  case V: norm_bwd_kernel<T, V><<<blocks, kBwdWarps * 32, backward_smem<T, V>(), s>>>(p); break;
    LT_NORM_BWD(1) LT_NORM_BWD(2) LT_NORM_BWD(3) LT_NORM_BWD(4)
    LT_NORM_BWD(5) LT_NORM_BWD(6) LT_NORM_BWD(7) LT_NORM_BWD(8)
#undef LT_NORM_BWD
  }
  check("norm_bwd_kernel");
  norm_bwd_reduce_kernel<<<(2 * p.D + 31) / 32, dim3(32, kReduceRows), 0, s>>>(p, blocks);
  check("norm_bwd_reduce_kernel");
}

void check_shape(int64_t N, int D) {
  if (D < 8 || D > kMaxD || D % 8 != 0) {
    throw std::invalid_argument("norm: needs 8 <= D <= " + std::to_string(kMaxD) + " and D % 8 == 0, got " +
                                std::to_string(D));
  }
  if (N < 0) throw std::invalid_argument("norm: negative row count");
}

}  // namespace

void norm_forward(const NormFwdParams& p, DType dtype, void* stream) {
  check_shape(p.N, p.D);
  if (p.N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::kBFloat16) forward_typed<__nv_bfloat16>(p, s);
  else forward_typed<__half>(p, s);
}

int backward_blocks(int64_t N, int D, DType dtype) {
  check_shape(N, D);
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int per_sm = std::max(1, dtype == DType::kBFloat16 ? backward_blocks_typed<__nv_bfloat16>(D)
                                                           : backward_blocks_typed<__half>(D));
  const int64_t need = (N + 4 * kBwdWarps - 1) / (4 * kBwdWarps);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(need, static_cast<int64_t>(per_sm) * sms)));
}

void norm_backward(const NormBwdParams& p, DType dtype, int blocks, void* stream) {
  check_shape(p.N, p.D);
  auto s = static_cast<cudaStream_t>(stream);
  if (p.N == 0) blocks = 1;  // still writes zero gradients for the weight and bias
  if (dtype == DType::kBFloat16) backward_typed<__nv_bfloat16>(p, blocks, s);
  else backward_typed<__half>(p, blocks, s);
}

}  // namespace longtrain::kernels::norm
