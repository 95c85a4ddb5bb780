// AFT-full on CUDA: the two elementwise O(b·L) steps around cuBLAS's GEMMs.
//
//   P[r, c]  = exp(w[r, c] - m[r])                     (0 where causal and c > r)
//   s[r]     = Σ_c P[r, c]                              (fp32, forward)
//   dw[r, c] = exp(w[r, c] - m[r]) · (dP[r, c] - dcorr[r]) (0 where masked or outside the tile's rows)
//
// m[r] is the row max of the unmasked bias (detached: it cancels in num/den).
// The algorithm, its shapes and the GEMMs are in full_op.cpp; the params in
// params.h. Two kernels, one CTA per tile row (threads stride the columns,
// so every load and store is coalesced):
//   aft_full_p_rows_kernel  forward row block: row max, then P and its row sum
//                           (the row is read twice; the second read from L2);
//   aft_full_p_dw_kernel    backward column block, after the dP GEMM: P with
//                           the saved m (the dAE GEMM's operand) and the
//                           product written straight into dw's slab (rows above
//                           the block written as 0), from one read of w; P in
//                           the product is the fp32 value, not the rounded one.
//                           (v2 read w twice, in a P kernel and a dw kernel:
//                           0.20 + 0.41 ms per 16K step, fused 0.49.)
// exp is the fast __expf (--use_fast_math): 2 ulp in fp32, far below the
// operand dtype's rounding (bf16 2^-9, fp16 2^-11). Memory-bound: 16-byte
// accesses where the rows are aligned (v1 moved 2- and 4-byte scalars).
//
// Matches: the plain-torch steps of full_op.cpp (the CPU path), and through the
// op model/aft.cpp aft_full.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/aft/params.h"
#include "kernels/aft/scan.cuh"
#include "kernels/convert.cuh"
#include "kernels/launch_check.h"

namespace longtrain::kernels {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, one CTA");

using aft::sigmoid;
using kernels::from_float;
using kernels::load8;
using kernels::store8;
using kernels::to_float;

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

// Columns [c, c + 8) of `row`, those at or past `end` read as 0 / not written:
// convert.cuh's 16-byte load8 / store8 when kVec (every row and tile start
// 16-byte aligned and col0 a multiple of 8, checked on the host) and the
// chunk is whole, else one element at a time.
template <bool kVec, typename X>
__device__ __forceinline__ void get8(const X* row, int c, int end, float (&v)[8]) {
  if (kVec && c + 8 <= end) return load8(row + c, v);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = c + j < end ? to_float(row[c + j]) : 0.f;
}
template <bool kVec, typename X>
__device__ __forceinline__ void put8(X* row, int c, int end, const float (&v)[8]) {
  if (kVec && c + 8 <= end) return store8(row + c, v);
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (c + j < end) row[c + j] = from_float<X>(v[j]);
}

// One CTA per row r = row0 + blockIdx.x; columns [0, col1), 8 per thread step.
// (Holding the row's first 16K columns in registers between the max and the
// exp, 127 registers, was slower on the H100: 0.258 -> 0.327 ms per 16K step;
// 2 CTAs per SM leave the load and store phases of a row unoverlapped.)
template <typename W, typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) aft_full_p_rows_kernel(const AftFullTileParams p) {
  const int r = p.row0 + blockIdx.x;
  const W* w = static_cast<const W*>(p.w) + static_cast<int64_t>(r) * p.w_stride;
  T* out = static_cast<T*>(p.p) + static_cast<int64_t>(blockIdx.x) * p.p_stride;
  const int n = unmasked_end(p, r);
  float mx = -FLT_MAX, x[8];
  for (int c = 8 * threadIdx.x; c < n; c += 8 * kThreads) {
    get8<kVec>(w, c, p.col1, x);
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (c + j < n) mx = fmaxf(mx, x[j]);
  }
  mx = block_max(mx);
  float sum = 0.f;
  for (int c = 8 * threadIdx.x; c < p.col1; c += 8 * kThreads) {
    get8<kVec>(w, c, p.col1, x);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      x[j] = c + j < n ? __expf(x[j] - mx) : 0.f;
      sum += x[j];
    }
    put8<kVec>(out, c, p.col1, x);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    p.m[r] = mx;
    p.s[r] = sum;
  }
}

// One CTA per row r = blockIdx.x of [0, L); columns [col0, col1) of dw, and
// for r >= row0 row r - row0 of the tile's P.
template <typename W, typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) aft_full_p_dw_kernel(const AftFullTileParams p) {
  const int r = blockIdx.x;
  W* dw = static_cast<W*>(p.dw) + static_cast<int64_t>(r) * p.dw_stride;
  float x[8], g[8];
  if (r < p.row0) {  // above the column block: masked (causal), no terms
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = 0.f;
    for (int c = p.col0 + 8 * threadIdx.x; c < p.col1; c += 8 * kThreads) put8<kVec>(dw, c, p.col1, x);
    return;
  }
  const W* w = static_cast<const W*>(p.w) + static_cast<int64_t>(r) * p.w_stride;
  const T* dp = static_cast<const T*>(p.dp) + static_cast<int64_t>(r - p.row0) * p.dp_stride;
  T* out = static_cast<T*>(p.p) + static_cast<int64_t>(r - p.row0) * p.p_stride;
  const int n = unmasked_end(p, r);
  const float mx = p.m[r], corr = p.dcorr[r];
  for (int c = p.col0 + 8 * threadIdx.x; c < p.col1; c += 8 * kThreads) {
    get8<kVec>(w, c, p.col1, x);
    get8<kVec>(dp, c - p.col0, p.col1 - p.col0, g);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      x[j] = c + j < n ? __expf(x[j] - mx) : 0.f;
      g[j] = x[j] * (g[j] - corr);
    }
    put8<kVec>(out, c - p.col0, p.col1 - p.col0, x);
    put8<kVec>(dw, c, p.col1, g);
  }
}

// ---- The O(L·d) steps: one CTA per row l of the pair tensors; threads
// stride the B·d (batch, channel) pairs of the row, N = 8 consecutive
// channels per step as 16-byte accesses where d % 8 == 0 and the inputs' rows
// are 16-byte aligned (checked on the host), else N = 1. Each is the
// plain-torch chain of full_op.cpp's CPU path with the same rounding points
// (AE and G in the operand dtype).

template <int N, typename X>
__device__ __forceinline__ void ldn(const X* src, float (&v)[N]) {
  if constexpr (N == 8) {
    load8(src, v);
  } else {
    v[0] = to_float(*src);
  }
}
template <int N, typename X>
__device__ __forceinline__ void stn(X* dst, const float (&v)[N]) {
  if constexpr (N == 8) {
    store8(dst, v);
  } else {
    *dst = from_float<X>(v[0]);
  }
}

template <typename T>
__device__ __forceinline__ const T* in(const void* base, const int64_t (&strides)[2], int b, int l, int c) {
  return static_cast<const T*>(base) + b * strides[0] + l * strides[1] + c;
}

__device__ __forceinline__ int64_t out_at(const AftFullRowsParams& p, int b, int l, int c) {
  return (static_cast<int64_t>(b) * p.L + l) * p.d + c;
}

__device__ __forceinline__ int64_t pair_at(const AftFullRowsParams& p, int l, int b, int c) {
  return (static_cast<int64_t>(l) * p.B + b) * 2 * p.d + c;  // the second of the pair: + d
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) aft_full_fwd_prep_kernel(const AftFullRowsParams p) {
  const int l = blockIdx.x;
  T* ae = static_cast<T*>(p.pairs);
  for (int i = N * threadIdx.x; i < p.B * p.d; i += N * kThreads) {
    const int b = i / p.d, c = i % p.d;
    float k[N], v[N], ref[N];
    ldn<N>(in<T>(p.k, p.k_strides, b, l, c), k);
    ldn<N>(in<T>(p.v, p.v_strides, b, l, c), v);
    ldn<N>(p.ref + b * p.d + c, ref);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      k[j] = __expf(k[j] - ref[j]);  // e
      v[j] *= k[j];                   // e·v
    }
    stn<N>(ae + pair_at(p, l, b, c), v);
    stn<N>(ae + pair_at(p, l, b, c) + p.d, k);
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) aft_full_fwd_out_kernel(const AftFullRowsParams p) {
  const int l = blockIdx.x;
  for (int i = N * threadIdx.x; i < p.B * p.d; i += N * kThreads) {
    const int b = i / p.d, c = i % p.d;
    float num[N], den[N], q[N];
    ldn<N>(p.nd + pair_at(p, l, b, c), num);
    ldn<N>(p.nd + pair_at(p, l, b, c) + p.d, den);
    ldn<N>(in<T>(p.q, p.q_strides, b, l, c), q);
#pragma unroll
    for (int j = 0; j < N; ++j) q[j] = sigmoid(q[j]) * (num[j] / den[j]);
    stn<N>(static_cast<T*>(p.y) + out_at(p, b, l, c), q);
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) aft_full_bwd_prep_kernel(const AftFullRowsParams p) {
  const int l = blockIdx.x;
  T* g = static_cast<T*>(p.pairs);
  float corr = 0.f;
  for (int i = N * threadIdx.x; i < p.B * p.d; i += N * kThreads) {
    const int b = i / p.d, c = i % p.d;
    float num[N], den[N], dy[N], q[N], gn[N], gd[N];
    ldn<N>(p.nd + pair_at(p, l, b, c), num);
    ldn<N>(p.nd + pair_at(p, l, b, c) + p.d, den);
    ldn<N>(in<T>(p.dy, p.dy_strides, b, l, c), dy);
    ldn<N>(in<T>(p.q, p.q_strides, b, l, c), q);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float ratio = num[j] / den[j], sig = sigmoid(q[j]);
      q[j] = dy[j] * ratio * sig * (1.f - sig);  // dq
      const float dnum = dy[j] * sig / den[j];
      // G rounded to the operand dtype, and corr from the rounded G, as the GEMMs see it.
      gn[j] = to_float(from_float<T>(dnum));
      gd[j] = to_float(from_float<T>(-dnum * ratio));
      corr = fmaf(gn[j], num[j], fmaf(gd[j], den[j], corr));
    }
    stn<N>(static_cast<T*>(p.dq) + out_at(p, b, l, c), q);
    stn<N>(g + pair_at(p, l, b, c), gn);
    stn<N>(g + pair_at(p, l, b, c) + p.d, gd);
  }
  corr = block_sum(corr);
  if (threadIdx.x == 0) p.corr[l] = corr / p.row_sums[l];
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) aft_full_bwd_post_kernel(const AftFullRowsParams p) {
  const int l = blockIdx.x;
  for (int i = N * threadIdx.x; i < p.B * p.d; i += N * kThreads) {
    const int b = i / p.d, c = i % p.d;
    float k[N], v[N], ref[N], da[N], de[N];
    ldn<N>(in<T>(p.k, p.k_strides, b, l, c), k);
    ldn<N>(in<T>(p.v, p.v_strides, b, l, c), v);
    ldn<N>(p.ref + b * p.d + c, ref);
    ldn<N>(p.dae + pair_at(p, l, b, c), da);
    ldn<N>(p.dae + pair_at(p, l, b, c) + p.d, de);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float e = __expf(k[j] - ref[j]);
      k[j] = fmaf(da[j], v[j], de[j]) * e;  // dk
      v[j] = da[j] * e;                     // dv
    }
    stn<N>(static_cast<T*>(p.dk) + out_at(p, b, l, c), k);
    stn<N>(static_cast<T*>(p.dv) + out_at(p, b, l, c), v);
  }
}

void check_tile(const char* name, const AftFullTileParams& p) {
  if (p.L < 1 || p.row0 < 0 || p.row1 > p.L || p.row0 >= p.row1 || p.col0 < 0 || p.col1 > p.L ||
      p.col0 >= p.col1 || p.m == nullptr || p.w == nullptr) {
    throw std::invalid_argument(std::string(name) + ": tile rows [" + std::to_string(p.row0) + ", " +
                                std::to_string(p.row1) + ") x columns [" + std::to_string(p.col0) + ", " +
                                std::to_string(p.col1) + ") is not a non-empty tile of L = " + std::to_string(p.L));
  }
}

enum class Step { kRows, kColsDw };

template <typename W, typename T, bool kVec>
void launch(Step step, const AftFullTileParams& p, cudaStream_t s) {
  switch (step) {
    case Step::kRows:
      aft_full_p_rows_kernel<W, T, kVec><<<p.row1 - p.row0, kThreads, 0, s>>>(p);
      return check_launch("aft_full_p_rows_kernel");
    case Step::kColsDw:
      aft_full_p_dw_kernel<W, T, kVec><<<p.L, kThreads, 0, s>>>(p);
      return check_launch("aft_full_p_dw_kernel");
  }
}

// Rows from ptr, `stride` elements apart, each starting 16-byte aligned (or no tensor).
bool rows_aligned(const void* ptr, int64_t stride) {
  return ptr == nullptr || (reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride % 8 == 0);
}

// Every row and tile start of the step's tensors 16-byte aligned, col0 a multiple of 8.
bool vectors_fit(Step step, const AftFullTileParams& p) {
  const bool ok = p.col0 % 8 == 0 && rows_aligned(p.w, p.w_stride) && rows_aligned(p.p, p.p_stride);
  if (step == Step::kColsDw) return ok && rows_aligned(p.dp, p.dp_stride) && rows_aligned(p.dw, p.dw_stride);
  return ok;
}

template <typename W>
void dispatch_op(Step step, const AftFullTileParams& p, AftDType op, cudaStream_t s) {
  const bool vec = vectors_fit(step, p);
  if (op == AftDType::kBFloat16) {
    vec ? launch<W, __nv_bfloat16, true>(step, p, s) : launch<W, __nv_bfloat16, false>(step, p, s);
  } else {
    vec ? launch<W, __half, true>(step, p, s) : launch<W, __half, false>(step, p, s);
  }
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

void aft_full_p_dw(const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream) {
  check_tile("aft_full_p_dw", p);
  if (p.row1 != p.L || p.p == nullptr || p.dp == nullptr || p.dw == nullptr || p.dcorr == nullptr) {
    throw std::invalid_argument("aft_full_p_dw: needs row1 = L, an output P, dP, dcorr and dw");
  }
  dispatch(Step::kColsDw, p, w, op, stream);
}

namespace {

enum class RowStep { kFwdPrep, kFwdOut, kBwdPrep, kBwdPost };

template <typename T, int N>
void launch_rows_of(RowStep step, const AftFullRowsParams& p, cudaStream_t s) {
  switch (step) {
    case RowStep::kFwdPrep:
      aft_full_fwd_prep_kernel<T, N><<<p.L, kThreads, 0, s>>>(p);
      return check_launch("aft_full_fwd_prep_kernel");
    case RowStep::kFwdOut:
      aft_full_fwd_out_kernel<T, N><<<p.L, kThreads, 0, s>>>(p);
      return check_launch("aft_full_fwd_out_kernel");
    case RowStep::kBwdPrep:
      aft_full_bwd_prep_kernel<T, N><<<p.L, kThreads, 0, s>>>(p);
      return check_launch("aft_full_bwd_prep_kernel");
    case RowStep::kBwdPost:
      aft_full_bwd_post_kernel<T, N><<<p.L, kThreads, 0, s>>>(p);
      return check_launch("aft_full_bwd_post_kernel");
  }
}

// 8 channels per step: d % 8 == 0 and every [B, L, d] input row 16-byte
// aligned (the pair tensors, ref and the outputs are contiguous, so then are they).
bool rows_vector(const AftFullRowsParams& p) {
  auto fits = [](const void* ptr, const int64_t (&strides)[2]) {
    return rows_aligned(ptr, strides[0]) && rows_aligned(ptr, strides[1]);
  };
  return p.d % 8 == 0 && fits(p.q, p.q_strides) && fits(p.k, p.k_strides) && fits(p.v, p.v_strides) &&
         fits(p.dy, p.dy_strides);
}

template <typename T>
void launch_rows(RowStep step, const AftFullRowsParams& p, cudaStream_t s) {
  rows_vector(p) ? launch_rows_of<T, 8>(step, p, s) : launch_rows_of<T, 1>(step, p, s);
}

void rows(RowStep step, const AftFullRowsParams& p, AftDType op, void* stream, const char* name, bool ok) {
  if (p.B < 1 || p.L < 1 || p.d < 1 || !ok) {
    throw std::invalid_argument(std::string(name) + ": needs B, L, d >= 1 and its inputs and outputs");
  }
  auto s = static_cast<cudaStream_t>(stream);
  op == AftDType::kBFloat16 ? launch_rows<__nv_bfloat16>(step, p, s) : launch_rows<__half>(step, p, s);
}

}  // namespace

void aft_full_fwd_prep(const AftFullRowsParams& p, AftDType op, void* stream) {
  rows(RowStep::kFwdPrep, p, op, stream, "aft_full_fwd_prep", p.k && p.v && p.ref && p.pairs);
}

void aft_full_fwd_out(const AftFullRowsParams& p, AftDType op, void* stream) {
  rows(RowStep::kFwdOut, p, op, stream, "aft_full_fwd_out", p.q && p.nd && p.y);
}

void aft_full_bwd_prep(const AftFullRowsParams& p, AftDType op, void* stream) {
  rows(RowStep::kBwdPrep, p, op, stream, "aft_full_bwd_prep",
       p.q && p.dy && p.nd && p.row_sums && p.pairs && p.dq && p.corr);
}

void aft_full_bwd_post(const AftFullRowsParams& p, AftDType op, void* stream) {
  rows(RowStep::kBwdPost, p, op, stream, "aft_full_bwd_post", p.k && p.v && p.ref && p.dae && p.dk && p.dv);
}

}  // namespace longtrain::kernels
