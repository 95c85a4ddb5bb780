// Causal AFT-simple, backward.
//
// Derivation (per channel; G_t = dy_t σ(q_t) is the gradient reaching
// R_t = num_t / den_t, and Z_t = Σ_{s<=t} exp(k_s), lse_t = log Z_t = m_t + log den_t):
//   R_t = Σ_{s<=t} p_ts v_s with p_ts = exp(k_s - lse_t)   (a softmax over s <= t)
//   dq_t = dy_t R_t σ(q_t)(1 - σ(q_t))
//   ∂R_t/∂v_s = p_ts,  ∂R_t/∂k_s = p_ts (v_s - R_t)          (s <= t)
//   dv_s = Σ_{t>=s} G_t p_ts          = exp(k_s - lse_s) P_s
//   dk_s = Σ_{t>=s} G_t p_ts (v_s - R_t) = exp(k_s - lse_s) (v_s P_s - Q_s)
// with the suffix sums (the transpose of a causal prefix sum is a suffix sum)
//   P_s = Σ_{t>=s} G_t exp(lse_s - lse_t),  Q_s = Σ_{t>=s} G_t R_t exp(lse_s - lse_t).
// lse is non-decreasing in t, so every factor exp(lse_s - lse_t) <= 1 and
// exp(k_s - lse_s) <= 1: the reverse recurrence
//   P_s = G_s + exp(lse_s - lse_{s+1}) P_{s+1}
// is a decaying scan that never overflows (the backward twin of the forward's
// running max). Terms that underflow are below e^-87 of G and lost anyway.
//
// Chunked like the forward (fwd.cu), in reverse:
//   1. summary: per chunk j, W_j = Σ_{t in j} G_t exp(ref_j - lse_t) (and W'_j
//      with G_t R_t), ref_j = lse at the end of chunk j - 1; lse_t and R_t are
//      recomputed from the state the forward saved at the chunk's start;
//   2. carry:   X_j = P at the first position after chunk j, relative to
//      ref_{j+1}: X_{n-1} = 0, X_{j-1} = W_j + exp(ref_j - ref_{j+1}) X_j
//      (8 segments of affine maps per channel, one CTA per 32 channels);
//   3. backward: per chunk, sub-chunks of kAftSub positions from last to first:
//      recompute the forward from the saved state (writing dq), keep lse, R, G,
//      k, v of the sub-chunk in registers, then run P and Q backwards over it
//      writing dk and dv.
// Bytes: q, k, v, dy read twice, dq, dk, dv written once, the saved state read
// once, small summaries. Nothing of size [B, L, d] in fp32.
//
// Matches: the gradient of model/aft.cpp aft_simple(q, k, v, causal = true).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/aft/params.h"
#include "kernels/aft/scan.cuh"
#include "kernels/aft/state.cuh"

namespace longtrain::kernels {
namespace {

using namespace aft;
constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) aft_simple_bwd_summary_kernel(const AftSimpleBwdParams bp) {
  const AftSimpleParams& p = bp.fwd;
  const Dims dm = dims_of(p);
  const ChunkThread th = chunk_thread(p.B, dm.n_chunks, p.d);
  if (!th.valid) return;
  const int t0 = th.chunk * p.chunk, t1 = min(t0 + p.chunk, p.L);
  ScanState st[2];
  float ref[2], w[2] = {0.f, 0.f}, wr[2] = {0.f, 0.f};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st[h] = saved_state(p, dm, th.b, t0 / kAftSub, th.c + h);
    ref[h] = lse_of(st[h]);
  }
  const int64_t qb = th.b * p.q_strides[0] + th.c, kb = th.b * p.k_strides[0] + th.c,
                vb = th.b * p.v_strides[0] + th.c, gb = th.b * bp.dy_strides[0] + th.c;
  if (th.chunk > 0) {  // chunk 0's summary is never used (nothing precedes it)
    for (int t = t0; t < t1; t += kAftSub) {
      typename Pair<T>::V qq[kAftSub], kk[kAftSub], vv[kAftSub], gg[kAftSub];
#pragma unroll
      for (int i = 0; i < kAftSub; ++i) {
        if (t + i < t1) {
          qq[i] = Pair<T>::load_raw(p.q, qb + (t + i) * p.q_strides[1]);
          kk[i] = Pair<T>::load_raw(p.k, kb + (t + i) * p.k_strides[1]);
          vv[i] = Pair<T>::load_raw(p.v, vb + (t + i) * p.v_strides[1]);
          gg[i] = Pair<T>::load_raw(bp.dy, gb + (t + i) * bp.dy_strides[1]);
        }
      }
#pragma unroll
      for (int i = 0; i < kAftSub; ++i) {
        if (t + i < t1) {
          const float2 q2 = Pair<T>::unpack(qq[i]), k2 = Pair<T>::unpack(kk[i]), v2 = Pair<T>::unpack(vv[i]),
                       g2 = Pair<T>::unpack(gg[i]);
          const float qx[2] = {q2.x, q2.y}, kx[2] = {k2.x, k2.y}, vx[2] = {v2.x, v2.y}, gx[2] = {g2.x, g2.y};
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            scan_add(st[h], kx[h], vx[h]);
            const float lse = st[h].m + __logf(st[h].s), r = st[h].n / st[h].s;
            const float g = gx[h] * sigmoid(qx[h]) * __expf(ref[h] - lse);
            w[h] += g;
            wr[h] = fmaf(g, r, wr[h]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bp.wsum[chunk_at(p, dm, 0, th.b, th.chunk, th.c + h)] = w[h];
    bp.wsum[chunk_at(p, dm, 1, th.b, th.chunk, th.c + h)] = wr[h];
    store_decay(bp, dm, th.b, th.chunk, th.c + h);
  }
}

// X_j for every chunk (both sums): the affine recurrence X_{i-1} = D_i X_i + W_i,
// D_i = exp(ref_i - ref_{i+1}) (0 for the last chunk; stored by the summary
// kernel), X_{n-1} = 0, scanned from the right. CTA (32 channels, kAftSegments segments); grid (d / 32, B).
__global__ void __launch_bounds__(32 * kAftSegments) aft_simple_bwd_carry_kernel(const AftSimpleBwdParams bp) {
  const AftSimpleParams& p = bp.fwd;
  const Dims dm = dims_of(p);
  __shared__ float seg_map[kAftSegments][3][32];  // A, C (for P), C' (for Q): X_out = A X_in + C
  const int lane = threadIdx.x, seg = threadIdx.y, c = blockIdx.x * 32 + lane, b = blockIdx.y;
  const int n = dm.n_chunks, per_seg = (n + kAftSegments - 1) / kAftSegments;
  const int j0 = min(seg * per_seg, n), j1 = min(j0 + per_seg, n);
  // Inputs through restrict pointers: unrolled iterations keep loads in flight.
  const float* __restrict__ ws = bp.wsum;
  float* __restrict__ xc = bp.xcarry;
  float A = 1.f, C = 0.f, Cr = 0.f;
  if (c < p.d) {
#pragma unroll 4
    for (int i = j1 - 1; i >= j0; --i) {
      const float D = __ldg(ws + chunk_at(p, dm, 2, b, i, c));
      A *= D;
      C = fmaf(D, C, __ldg(ws + chunk_at(p, dm, 0, b, i, c)));
      Cr = fmaf(D, Cr, __ldg(ws + chunk_at(p, dm, 1, b, i, c)));
    }
  }
  seg_map[seg][0][lane] = A;
  seg_map[seg][1][lane] = C;
  seg_map[seg][2][lane] = Cr;
  __syncthreads();
  if (c >= p.d) return;
  float X = 0.f, Xr = 0.f;  // X_{j1 - 1}: the later segments applied to X_{n-1} = 0
  for (int z = kAftSegments - 1; z > seg; --z) {
    X = fmaf(seg_map[z][0][lane], X, seg_map[z][1][lane]);
    Xr = fmaf(seg_map[z][0][lane], Xr, seg_map[z][2][lane]);
  }
#pragma unroll 4
  for (int i = j1 - 1; i >= j0; --i) {
    xc[chunk_at(p, dm, 0, b, i, c)] = X;
    xc[chunk_at(p, dm, 1, b, i, c)] = Xr;
    const float D = __ldg(ws + chunk_at(p, dm, 2, b, i, c));
    X = fmaf(D, X, __ldg(ws + chunk_at(p, dm, 0, b, i, c)));
    Xr = fmaf(D, Xr, __ldg(ws + chunk_at(p, dm, 1, b, i, c)));
  }
}

// 2 CTAs per SM: the sub-chunk's loads are held packed (4 bytes per pair) to
// stay under 128 registers.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2) aft_simple_bwd_kernel(const AftSimpleBwdParams bp) {
  using V = typename Pair<T>::V;
  const AftSimpleParams& p = bp.fwd;
  const Dims dm = dims_of(p);
  const ChunkThread th = chunk_thread(p.B, dm.n_chunks, p.d);
  if (!th.valid) return;
  const int t0 = th.chunk * p.chunk, t1 = min(t0 + p.chunk, p.L);
  const bool last = th.chunk + 1 == dm.n_chunks;
  // Running suffix sums relative to exp(-ref): P, Q of the position after the
  // one being processed. Past the last chunk: zero, with a reference whose
  // factor exp(lse - ref) is 0 (not inf * 0).
  float P[2], Q[2], ref[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    P[h] = last ? 0.f : bp.xcarry[chunk_at(p, dm, 0, th.b, th.chunk, th.c + h)];
    Q[h] = last ? 0.f : bp.xcarry[chunk_at(p, dm, 1, th.b, th.chunk, th.c + h)];
    ref[h] = last ? INFINITY : chunk_ref(p, dm, th.b, th.chunk + 1, th.c + h);
  }
  const int64_t qb = th.b * p.q_strides[0] + th.c, kb = th.b * p.k_strides[0] + th.c,
                vb = th.b * p.v_strides[0] + th.c, gb = th.b * bp.dy_strides[0] + th.c,
                dqb = th.b * bp.dq_strides[0] + th.c, dkb = th.b * bp.dk_strides[0] + th.c,
                dvb = th.b * bp.dv_strides[0] + th.c;
  const int last_sub_start = t0 + ((t1 - 1 - t0) / kAftSub) * kAftSub;
  for (int t = last_sub_start; t >= t0; t -= kAftSub) {
    V qq[kAftSub], kk[kAftSub], vv[kAftSub], gg[kAftSub];
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        qq[i] = Pair<T>::load_raw(p.q, qb + (t + i) * p.q_strides[1]);
        kk[i] = Pair<T>::load_raw(p.k, kb + (t + i) * p.k_strides[1]);
        vv[i] = Pair<T>::load_raw(p.v, vb + (t + i) * p.v_strides[1]);
        gg[i] = Pair<T>::load_raw(bp.dy, gb + (t + i) * bp.dy_strides[1]);
      }
    }
    // Forward over the sub-chunk from the saved state: lse, R, G per position;
    // dq written here.
    ScanState st[2] = {saved_state(p, dm, th.b, t / kAftSub, th.c), saved_state(p, dm, th.b, t / kAftSub, th.c + 1)};
    float lse[kAftSub][2], R[kAftSub][2], G[kAftSub][2];
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        const float2 q2 = Pair<T>::unpack(qq[i]), k2 = Pair<T>::unpack(kk[i]), v2 = Pair<T>::unpack(vv[i]),
                     g2 = Pair<T>::unpack(gg[i]);
        const float qx[2] = {q2.x, q2.y}, kx[2] = {k2.x, k2.y}, vx[2] = {v2.x, v2.y}, gx[2] = {g2.x, g2.y};
        float dq[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          scan_add(st[h], kx[h], vx[h]);
          lse[i][h] = st[h].m + __logf(st[h].s);
          R[i][h] = st[h].n / st[h].s;
          const float sg = sigmoid(qx[h]);
          G[i][h] = gx[h] * sg;
          dq[h] = G[i][h] * R[i][h] * (1.f - sg);
        }
        Pair<T>::store(bp.dq, dqb + (t + i) * bp.dq_strides[1], dq[0], dq[1]);
      }
    }
    // Backward over the sub-chunk: P, Q from the right; dk, dv.
#pragma unroll
    for (int i = kAftSub - 1; i >= 0; --i) {
      if (t + i < t1) {
        const float2 k2 = Pair<T>::unpack(kk[i]), v2 = Pair<T>::unpack(vv[i]);
        const float kx[2] = {k2.x, k2.y}, vx[2] = {v2.x, v2.y};
        float dk[2], dv[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float f = __expf(lse[i][h] - ref[h]);
          P[h] = fmaf(f, P[h], G[i][h]);
          Q[h] = fmaf(f, Q[h], G[i][h] * R[i][h]);
          ref[h] = lse[i][h];
          const float e = __expf(kx[h] - lse[i][h]);
          dv[h] = e * P[h];
          dk[h] = e * fmaf(vx[h], P[h], -Q[h]);
        }
        Pair<T>::store(bp.dk, dkb + (t + i) * bp.dk_strides[1], dk[0], dk[1]);
        Pair<T>::store(bp.dv, dvb + (t + i) * bp.dv_strides[1], dv[0], dv[1]);
      }
    }
  }
}

}  // namespace

void aft::launch_bwd_carry(const AftSimpleBwdParams& bp, cudaStream_t stream) {
  const AftSimpleParams& p = bp.fwd;
  aft_simple_bwd_carry_kernel<<<dim3((p.d + 31) / 32, p.B), dim3(32, kAftSegments), 0, stream>>>(bp);
  check_launch("aft_simple_bwd_carry_kernel");
}

namespace {

template <typename T>
void launch_bwd(const AftSimpleBwdParams& bp, cudaStream_t stream) {
  const AftSimpleParams& p = bp.fwd;
  const int n_chunks = (p.L + p.chunk - 1) / p.chunk;
  const int64_t threads = static_cast<int64_t>(p.B) * n_chunks * (p.d / 2);
  const int blocks = static_cast<int>((threads + kThreads - 1) / kThreads);
  aft_simple_bwd_summary_kernel<T><<<blocks, kThreads, 0, stream>>>(bp);
  check_launch("aft_simple_bwd_summary_kernel");
  launch_bwd_carry(bp, stream);
  aft_simple_bwd_kernel<T><<<blocks, kThreads, 0, stream>>>(bp);
  check_launch("aft_simple_bwd_kernel");
}

}  // namespace

void aft_simple_bwd(const AftSimpleBwdParams& bp, AftDType dtype, void* stream) {
  const AftSimpleParams& p = bp.fwd;
  if (p.d % 2 != 0 || p.chunk % kAftSub != 0 || p.L < 1 || p.B < 1) {
    throw std::invalid_argument("aft_simple_bwd: needs even d, L >= 1, B >= 1 and a chunk that is a multiple of " +
                                std::to_string(kAftSub));
  }
  auto s = static_cast<cudaStream_t>(stream);
  dtype == AftDType::kBFloat16 ? launch_bwd<__nv_bfloat16>(bp, s) : launch_bwd<__half>(bp, s);
}

}  // namespace longtrain::kernels
