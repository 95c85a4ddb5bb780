// AFT-full on CUDA: the two elementwise O(b·L) steps around cuBLAS's GEMMs.
//
//   P[r, c]  = exp(w[r, c] - m[r])                     (0 where causal and c > r)
//   s[r]     = Σ_c P[r, c]                              (fp32, forward)
//   dw[r, c] = exp(w[r, c] - m[r]) · (dP[r, c] - dcorr[r]) (0 where masked or outside the tile's rows)
//
// m[r] is the row max of the unmasked bias (detached: it cancels in num/den).
// The algorithm, its shapes and the GEMMs are in full_op.cpp; the params in
// params.h. Three kernels, one CTA per tile row (threads stride the columns,
// so every load and store is coalesced):
//   aft_full_p_rows_kernel  forward row block: row max, then P and its row sum
//                           (the row is read twice; the second read from L2);
//   aft_full_p_cols_kernel  backward column block: P with the saved m;
//   aft_full_dw_kernel      backward column block: the product written straight
//                           into dw's slab (rows above the block written as 0),
//                           P recomputed in fp32 from w rather than read back
//                           rounded.
// exp is the fast __expf (--use_fast_math): 2 ulp in fp32, far below the
// operand dtype's rounding (bf16 2^-9, fp16 2^-11). Memory-bound; v1 moves
// scalars (4-byte w loads, 2-byte P stores), not vectors.
//
// Matches: the plain-torch steps of full_op.cpp (the CPU path), and through the
// op model/aft.cpp aft_full.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <stdexcept>
#include <string>

#include "kernels/aft/params.h"

namespace longtrain::kernels {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, one CTA");

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

// Columns [0, n) of row r are unmasked within [col0, col1): n clipped to the tile.
__device__ __forceinline__ int unmasked_end(const AftFullTileParams& p, int r) {
  return p.causal ? min(p.col1, r + 1) : p.col1;
}

__device__ float block_max(float x) {
  __shared__ float warp_max[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = x;
  __syncthreads();
  x = -FLT_MAX;
  for (int i = 0; i < kThreads / 32; ++i) x = fmaxf(x, warp_max[i]);
  return x;
}

// The sum over the CTA, valid in thread 0.
__device__ float block_sum(float x) {
  __shared__ float warp_sum[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  if (threadIdx.x % 32 == 0) warp_sum[threadIdx.x / 32] = x;
  __syncthreads();
  x = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) x += warp_sum[i];
  return x;
}

// One CTA per row r = row0 + blockIdx.x; columns [0, col1).
template <typename W, typename T>
__global__ void __launch_bounds__(kThreads) aft_full_p_rows_kernel(const AftFullTileParams p) {
  const int r = p.row0 + blockIdx.x;
  const W* w = static_cast<const W*>(p.w) + static_cast<int64_t>(r) * p.w_stride;
  T* out = static_cast<T*>(p.p) + static_cast<int64_t>(blockIdx.x) * p.p_stride;
  const int n = unmasked_end(p, r);
  float mx = -FLT_MAX;
  for (int c = threadIdx.x; c < n; c += kThreads) mx = fmaxf(mx, to_float(w[c]));
  mx = block_max(mx);
  float sum = 0.f;
  for (int c = threadIdx.x; c < p.col1; c += kThreads) {
    const float e = c < n ? __expf(to_float(w[c]) - mx) : 0.f;
    sum += e;
    out[c] = from_float<T>(e);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    p.m[r] = mx;
    p.s[r] = sum;
  }
}

// One CTA per row r = row0 + blockIdx.x; columns [col0, col1).
template <typename W, typename T>
__global__ void __launch_bounds__(kThreads) aft_full_p_cols_kernel(const AftFullTileParams p) {
  const int r = p.row0 + blockIdx.x;
  const W* w = static_cast<const W*>(p.w) + static_cast<int64_t>(r) * p.w_stride;
  T* out = static_cast<T*>(p.p) + static_cast<int64_t>(blockIdx.x) * p.p_stride;
  const int n = unmasked_end(p, r);
  const float mx = p.m[r];
  for (int c = p.col0 + threadIdx.x; c < p.col1; c += kThreads) {
    out[c - p.col0] = from_float<T>(c < n ? __expf(to_float(w[c]) - mx) : 0.f);
  }
}

// One CTA per row r = blockIdx.x of [0, L); columns [col0, col1) of dw.
template <typename W, typename T>
__global__ void __launch_bounds__(kThreads) aft_full_dw_kernel(const AftFullTileParams p) {
  const int r = blockIdx.x;
  W* dw = static_cast<W*>(p.dw) + static_cast<int64_t>(r) * p.dw_stride;
  if (r < p.row0) {  // above the column block: masked (causal), no terms
    for (int c = p.col0 + threadIdx.x; c < p.col1; c += kThreads) dw[c] = from_float<W>(0.f);
    return;
  }
  const W* w = static_cast<const W*>(p.w) + static_cast<int64_t>(r) * p.w_stride;
  const T* dp = static_cast<const T*>(p.dp) + static_cast<int64_t>(r - p.row0) * p.dp_stride;
  const int n = unmasked_end(p, r);
  const float mx = p.m[r], corr = p.dcorr[r];
  for (int c = p.col0 + threadIdx.x; c < p.col1; c += kThreads) {
    dw[c] = from_float<W>(c < n ? __expf(to_float(w[c]) - mx) * (to_float(dp[c - p.col0]) - corr) : 0.f);
  }
}

void check_launch(const char* name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(err));
}

void check_tile(const char* name, const AftFullTileParams& p) {
  if (p.L < 1 || p.row0 < 0 || p.row1 > p.L || p.row0 >= p.row1 || p.col0 < 0 || p.col1 > p.L ||
      p.col0 >= p.col1 || p.m == nullptr || p.w == nullptr) {
    throw std::invalid_argument(std::string(name) + ": tile rows [" + std::to_string(p.row0) + ", " +
                                std::to_string(p.row1) + ") x columns [" + std::to_string(p.col0) + ", " +
                                std::to_string(p.col1) + ") is not a non-empty tile of L = " + std::to_string(p.L));
  }
}

enum class Step { kRows, kCols, kDw };

template <typename W, typename T>
void launch(Step step, const AftFullTileParams& p, cudaStream_t s) {
  switch (step) {
    case Step::kRows:
      aft_full_p_rows_kernel<W, T><<<p.row1 - p.row0, kThreads, 0, s>>>(p);
      return check_launch("aft_full_p_rows_kernel");
    case Step::kCols:
      aft_full_p_cols_kernel<W, T><<<p.row1 - p.row0, kThreads, 0, s>>>(p);
      return check_launch("aft_full_p_cols_kernel");
    case Step::kDw:
      aft_full_dw_kernel<W, T><<<p.L, kThreads, 0, s>>>(p);
      return check_launch("aft_full_dw_kernel");
  }
}

template <typename W>
void dispatch_op(Step step, const AftFullTileParams& p, AftDType op, cudaStream_t s) {
  op == AftDType::kBFloat16 ? launch<W, __nv_bfloat16>(step, p, s) : launch<W, __half>(step, p, s);
}

void dispatch(Step step, const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (w) {
    case AftFullWDType::kFloat32: return dispatch_op<float>(step, p, op, s);
    case AftFullWDType::kBFloat16: return dispatch_op<__nv_bfloat16>(step, p, op, s);
    case AftFullWDType::kFloat16: return dispatch_op<__half>(step, p, op, s);
  }
}

}  // namespace

void aft_full_p_rows(const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream) {
  check_tile("aft_full_p_rows", p);
  if (p.col0 != 0 || p.p == nullptr || p.s == nullptr) {
    throw std::invalid_argument("aft_full_p_rows: needs col0 = 0, an output P and row sums s");
  }
  dispatch(Step::kRows, p, w, op, stream);
}

void aft_full_p_cols(const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream) {
  check_tile("aft_full_p_cols", p);
  if (p.p == nullptr) throw std::invalid_argument("aft_full_p_cols: needs an output P");
  dispatch(Step::kCols, p, w, op, stream);
}

void aft_full_dw(const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream) {
  check_tile("aft_full_dw", p);
  if (p.row1 != p.L || p.dp == nullptr || p.dw == nullptr || p.dcorr == nullptr) {
    throw std::invalid_argument("aft_full_dw: needs row1 = L, dP, dcorr and dw");
  }
  dispatch(Step::kDw, p, w, op, stream);
}

}  // namespace longtrain::kernels
