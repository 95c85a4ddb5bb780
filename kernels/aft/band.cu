// Causal AFT-local / AFT-conv (banded Toeplitz bias), forward and backward.
//
//   y_t = σ(q_t) ⊙ Σ_{s<=t} e^{k_s + w_ts} v_s / Σ_{s<=t} e^{k_s + w_ts},
//   w_ts = u[h, t - s] for t - s < window, 0 outside (not -inf).
//
// Forward: the un-biased simple scan (fwd.cu, without y) saves its state every
// kAftSub positions; then one thread per (8 rows, channel pair) starts each of
// its rows t from the un-biased prefix state through row t - window (a saved
// state plus < 8 steps, then one step per row), and merges the band terms
// (k_s + u_{t-s}, v_s) one by one — term by term, as the reference, so a very
// negative u never cancels — taking the sources s in order, each k, v row read
// once for the 8 rows. It writes y and saves lse_t and R_t (fp32) per row.
//
// Backward (G_t = dy_t σ(q_t), p_ts = e^{k_s + w_ts - lse_t}):
//   dq_t = G_t R_t (1 - σ(q_t));  dv_s = Σ_{t>=s} G_t p_ts;
//   dk_s = Σ_{t>=s} G_t p_ts (v_s - R_t);  du_j = Σ_{b, c in h, s} G_{s+j} p_{s+j,s} (v_s - R_{s+j}).
// Band rows t in [s, s + window) are summed directly (each p <= 1). The far rows
// t >= s + window have w = 0: with the un-biased prefix lse lseF_s as reference
// (lse_t >= lseF_s there, and lseF is non-decreasing),
//   T_s = Σ_{t >= s+window} G_t e^{lseF_s - lse_t}
//       = G_{s+window} e^{lseF_s - lse_{s+window}} + e^{lseF_s - lseF_{s+1}} T_{s+1},
// the simple backward's decaying reverse scan with its inputs shifted by the
// window (bwd.cu's two-level scan: summaries, the same carry kernel, then per
// chunk from the right); dv_s += e^{k_s - lseF_s} T_s, dk_s likewise with R.
// The band rows are taken in order, each read once for the thread's 8 sources;
// du_j is summed over the 8 sources and 2 channels, then over the lanes of the
// warp that share a head (shuffles), before one fp32 atomic per tap.
//
// Matches: model/aft.cpp aft_local / aft_conv(..., causal = true).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/aft/params.h"
#include "kernels/aft/scan.cuh"
#include "kernels/aft/state.cuh"
#include "kernels/math_constants.h"

namespace longtrain::kernels {
namespace {

using namespace aft;
constexpr int kThreads = 256;
// The band backward holds 8 sources' k, v, dk, dv, 8 du slots and 8 taps per
// thread: CTAs of 128, 3 per SM at 168 registers (88 bytes of spill) measured
// faster than 2 per SM without spill (207 registers) and than one channel per
// thread at 3-5 CTAs per SM (kernels/aft/NOTES.md, v3).
constexpr int kBandBwdThreads = 128;

__device__ __forceinline__ int64_t row_at(const AftSimpleParams& p, int a, int b, int t, int c) {
  return ((static_cast<int64_t>(a) * p.B + b) * p.L + t) * p.d + c;
}

// lse and R of row t, channels c and c + 1.
__device__ __forceinline__ void load_row(const AftSimpleParams& p, const float* rows, int b, int t, int c,
                                         float2& lse, float2& r) {
  lse = *reinterpret_cast<const float2*>(rows + row_at(p, 0, b, t, c));
  r = *reinterpret_cast<const float2*>(rows + row_at(p, 1, b, t, c));
}

// One band term (source k, v of two channels; tap bias ul, all in log2 units
// but v) of row i: the first sweep takes the max logit, the second the sums.
template <bool kSums>
__device__ __forceinline__ void band_term(float (&M)[kAftSub][2], float (&num)[kAftSub][2], float (&den)[kAftSub][2],
                                          int i, float2 kl, float2 v, float ul) {
  if constexpr (!kSums) {
    M[i][0] = fmaxf(M[i][0], kl.x + ul);
    M[i][1] = fmaxf(M[i][1], kl.y + ul);
  } else {
    const float e0 = exp2f(kl.x + ul - M[i][0]), e1 = exp2f(kl.y + ul - M[i][1]);
    num[i][0] = fmaf(e0, v.x, num[i][0]);
    num[i][1] = fmaf(e1, v.y, num[i][1]);
    den[i][0] += e0;
    den[i][1] += e1;
  }
}

// A sweep of a thread's 8 rows t0 + i over their band: source s = t0 - o
// meets row i at tap j = o + i. For o in [0, o_mid) all 8 rows take the
// source (no checks), and the 8 taps o..o+7 sit in a ring by tap % 8 (one
// load per source); the few other sources check each row.
template <bool kSums, typename T>
__device__ __forceinline__ void band_sweep(const AftSimpleParams& p, const float* u, int w, int t0, int n, int o_mid,
                                           int64_t kb, int64_t vb, float (&M)[kAftSub][2],
                                           float (&num)[kAftSub][2], float (&den)[kAftSub][2]) {
  auto source = [&](int s, float2& kl, float2& v) {
    const float2 k2 = Pair<T>::load(p.k, kb + s * p.k_strides[1]);
    kl = make_float2(k2.x * kLog2e, k2.y * kLog2e);
    v = kSums ? Pair<T>::load(p.v, vb + s * p.v_strides[1]) : make_float2(0.f, 0.f);
  };
  auto checked = [&](int o) {
    float2 kl, v;
    source(t0 - o, kl, v);
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      const int j = o + i;
      if (i < n && j >= 0 && j < w) band_term<kSums>(M, num, den, i, kl, v, __ldg(u + j) * kLog2e);
    }
  };
  for (int o = 1 - n; o < 0; ++o) checked(o);
  for (int o = o_mid, o_end = min(w - 1, t0); o <= o_end; ++o) checked(o);
  if (o_mid == 0) return;
  float ring[kAftSub];
#pragma unroll
  for (int m = 0; m < kAftSub - 1; ++m) ring[m] = __ldg(u + m) * kLog2e;  // o_mid > 0: w >= 8
  for (int o0 = 0; o0 < o_mid; o0 += kAftSub) {
#pragma unroll
    for (int oo = 0; oo < kAftSub; ++oo) {
      const int o = o0 + oo;
      if (o >= o_mid) break;
      ring[(oo + kAftSub - 1) & (kAftSub - 1)] = __ldg(u + o + kAftSub - 1) * kLog2e;  // tap o + 7 enters
      float2 kl, v;
      source(t0 - o, kl, v);
#pragma unroll
      for (int i = 0; i < kAftSub; ++i) band_term<kSums>(M, num, den, i, kl, v, ring[(oo + i) & (kAftSub - 1)]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) aft_band_fwd_kernel(const AftBandParams bp) {
  const AftSimpleParams& p = bp.scan;
  const Dims dm = dims_of(p);
  const ChunkThread th = chunk_thread(p.B, dm.n_sub, p.d);  // "chunk" = a sub-chunk of 8 rows
  if (!th.valid) return;
  const int w = bp.window, t0 = th.chunk * kAftSub, n = min(kAftSub, p.L - t0);
  const float* u = bp.u + static_cast<int64_t>(th.c / (p.d / bp.H)) * w;
  const int64_t qb = th.b * p.q_strides[0] + th.c, kb = th.b * p.k_strides[0] + th.c,
                vb = th.b * p.v_strides[0] + th.c, yb = th.b * p.y_strides[0] + th.c;
  // F: the un-biased prefix state through row t0 - w, i.e. of positions [0, t0 - w + 1).
  ScanState F[2] = {empty_state(), empty_state()};
  const int upto = t0 - w + 1;
  if (upto > 0) {
    const int sub = upto / kAftSub;
    F[0] = saved_state(p, dm, th.b, sub, th.c);
    F[1] = saved_state(p, dm, th.b, sub, th.c + 1);
    for (int s = sub * kAftSub; s < upto; ++s) {
      const float2 k2 = Pair<T>::load(p.k, kb + s * p.k_strides[1]), v2 = Pair<T>::load(p.v, vb + s * p.v_strides[1]);
      scan_add(F[0], k2.x, v2.x);
      scan_add(F[1], k2.y, v2.y);
    }
  }
  // Row t0 + i starts from its un-biased prefix (through t0 + i - w): Fm its
  // max (log2 units), num / den its sums relative to it.
  float Fm[kAftSub][2], M[kAftSub][2], num[kAftSub][2], den[kAftSub][2];
#pragma unroll
  for (int i = 0; i < kAftSub; ++i) {
    const int far = t0 + i - w;  // the newest un-biased position of row t0 + i
    if (i > 0 && i < n && far >= 0) {
      const float2 k2 = Pair<T>::load(p.k, kb + far * p.k_strides[1]),
                   v2 = Pair<T>::load(p.v, vb + far * p.v_strides[1]);
      scan_add(F[0], k2.x, v2.x);
      scan_add(F[1], k2.y, v2.y);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      Fm[i][h] = M[i][h] = F[h].m * kLog2e;  // -inf when empty
      num[i][h] = F[h].n;
      den[i][h] = F[h].s;
    }
  }
  // Two sweeps over the band against one reference per row (no per-term
  // branch): the max logit M (log2 units), then the sums of 2^(logit - M);
  // every term is <= 1 and the max one is 1, so den >= 1, as in the scan.
  const int o_mid = n == kAftSub ? max(0, min(w - kAftSub + 1, t0 + 1)) : 0;
  band_sweep<false, T>(p, u, w, t0, n, o_mid, kb, vb, M, num, den);
#pragma unroll
  for (int i = 0; i < kAftSub; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float f = Fm[i][h] == -INFINITY ? 0.f : exp2f(Fm[i][h] - M[i][h]);
      num[i][h] *= f;
      den[i][h] *= f;
    }
  band_sweep<true, T>(p, u, w, t0, n, o_mid, kb, vb, M, num, den);
#pragma unroll
  for (int i = 0; i < kAftSub; ++i) {
    if (i < n) {
      const int t = t0 + i;
      const float2 q2 = Pair<T>::load(p.q, qb + t * p.q_strides[1]);
      const float r0 = num[i][0] / den[i][0], r1 = num[i][1] / den[i][1];
      Pair<T>::store(p.y, yb + t * p.y_strides[1], sigmoid(q2.x) * r0, sigmoid(q2.y) * r1);
      *reinterpret_cast<float2*>(bp.rows + row_at(p, 0, th.b, t, th.c)) =
          make_float2(M[i][0] / kLog2e + __logf(den[i][0]), M[i][1] / kLog2e + __logf(den[i][1]));
      *reinterpret_cast<float2*>(bp.rows + row_at(p, 1, th.b, t, th.c)) = make_float2(r0, r1);
    }
  }
}

// W_j = Σ_{s in chunk j} G_{s+w} e^{ref_j - lse_{s+w}} (and with R_{s+w}); see bwd.cu.
template <typename T>
__global__ void __launch_bounds__(kThreads) aft_band_bwd_summary_kernel(const AftBandBwdParams bb) {
  const AftSimpleBwdParams& bp = bb.scan;
  const AftSimpleParams& p = bp.fwd;
  const Dims dm = dims_of(p);
  const ChunkThread th = chunk_thread(p.B, dm.n_chunks, p.d);
  if (!th.valid) return;
  const int t0 = th.chunk * p.chunk, t1 = min(t0 + p.chunk, p.L), w = bb.window;
  float W[2] = {0.f, 0.f}, Wr[2] = {0.f, 0.f};
  if (th.chunk > 0) {
    const float ref[2] = {chunk_ref(p, dm, th.b, th.chunk, th.c), chunk_ref(p, dm, th.b, th.chunk, th.c + 1)};
    const int64_t qb = th.b * p.q_strides[0] + th.c, gb = th.b * bp.dy_strides[0] + th.c;
    for (int s = t0; s < t1 && s + w < p.L; ++s) {
      const int t = s + w;
      const float2 q2 = Pair<T>::load(p.q, qb + t * p.q_strides[1]), g2 = Pair<T>::load(bp.dy, gb + t * bp.dy_strides[1]);
      float2 lse, r;
      load_row(p, bb.rows, th.b, t, th.c, lse, r);
      const float g0 = g2.x * sigmoid(q2.x) * __expf(ref[0] - lse.x), g1 = g2.y * sigmoid(q2.y) * __expf(ref[1] - lse.y);
      W[0] += g0;
      W[1] += g1;
      Wr[0] = fmaf(g0, r.x, Wr[0]);
      Wr[1] = fmaf(g1, r.y, Wr[1]);
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bp.wsum[chunk_at(p, dm, 0, th.b, th.chunk, th.c + h)] = W[h];
    bp.wsum[chunk_at(p, dm, 1, th.b, th.chunk, th.c + h)] = Wr[h];
    store_decay(bp, dm, th.b, th.chunk, th.c + h);
  }
}

// How many lanes of this thread's warp sum a du term before one atomic: the
// warp's lanes must all work on the same rows (one batch and chunk, so that
// they run the same loop trips and can shuffle), and a group must lie in one
// head: the largest power of two <= 32 dividing the head's channel pairs.
// Groups start at multiples of it (warps start at multiples of 32 threads, and
// a row's pairs are a multiple of it). 1 (an atomic per thread) otherwise.
__device__ __forceinline__ int du_lanes(const AftSimpleParams& p, int H, int n_chunks) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t first = g - (threadIdx.x & 31), last = first + 31, pairs = p.d / 2;
  if (first / pairs != last / pairs || last / pairs >= static_cast<int64_t>(p.B) * n_chunks) return 1;
  int lanes = 32;
  while ((p.d / H / 2) % lanes != 0) lanes /= 2;
  return lanes;
}

// du_j += x summed over `lanes` lanes (a shuffle reduction, then one atomic).
__device__ __forceinline__ void add_tap(float* du_j, float x, int lanes) {
  for (int o = 1; o < lanes; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  if ((threadIdx.x & (lanes - 1)) == 0) atomicAdd(du_j, x);
}

// Rows t + rho0 .. t + rho0 + 7 of a backward thread's band (its 8 sources
// t + i: kl their keys in log2 units, v their values); kChecked tests each
// pair against the band, the sources' range and L, and each row against the
// band's last row (see the band part of aft_band_bwd_kernel).
template <bool kChecked, typename T>
__device__ __forceinline__ void band_rows(const AftBandBwdParams& bb, int b, int c, int64_t qb, int64_t gb, int t,
                                          int t1, int rho0, int n_rows, int w, const float* u, float* du, int lanes,
                                          const float2 (&kl)[kAftSub], const float2 (&v)[kAftSub],
                                          float (&dk)[kAftSub][2], float (&dv)[kAftSub][2], float (&acc)[kAftSub],
                                          float (&ring)[kAftSub]) {
  const AftSimpleParams& p = bb.scan.fwd;
#pragma unroll
  for (int rr = 0; rr < kAftSub; ++rr) {
    const int rho = rho0 + rr, row = t + rho;
    if (kChecked && rho >= n_rows) break;
    ring[rr] = !kChecked || rho < w ? __ldg(u + rho) * kLog2e : 0.f;  // tap rho enters slot rho % 8
    if (!kChecked || row < p.L) {
      const float2 q2 = Pair<T>::load(p.q, qb + row * p.q_strides[1]),
                   g2 = Pair<T>::load(bb.scan.dy, gb + row * bb.scan.dy_strides[1]);
      float2 lse, r;
      load_row(p, bb.rows, b, row, c, lse, r);
      const float G0 = g2.x * sigmoid(q2.x), G1 = g2.y * sigmoid(q2.y);
      const float a0 = -lse.x * kLog2e, a1 = -lse.y * kLog2e;
#pragma unroll
      for (int i = 0; i < kAftSub; ++i) {
        const int j = rho - i;
        if (!kChecked || (j >= 0 && j < w && t + i < t1)) {
          const float uj = ring[(rr - i) & (kAftSub - 1)];
          const float g0 = G0 * exp2f(kl[i].x + uj + a0), g1 = G1 * exp2f(kl[i].y + uj + a1);
          const float x0 = g0 * (v[i].x - r.x), x1 = g1 * (v[i].y - r.y);
          dv[i][0] += g0;
          dv[i][1] += g1;
          dk[i][0] += x0;
          dk[i][1] += x1;
          acc[(rr - i) & (kAftSub - 1)] += x0 + x1;  // j % 8: rho0 is a multiple of 8
        }
      }
    }
    if (!kChecked || rho >= kAftSub - 1) {  // tap rho - 7 is complete
      float& a = acc[(rr + 1) & (kAftSub - 1)];
      add_tap(du + (rho - (kAftSub - 1)), a, lanes);
      a = 0.f;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kBandBwdThreads, 3) aft_band_bwd_kernel(const AftBandBwdParams bb) {
  const AftSimpleBwdParams& bp = bb.scan;
  const AftSimpleParams& p = bp.fwd;
  const Dims dm = dims_of(p);
  const ChunkThread th = chunk_thread(p.B, dm.n_chunks, p.d);
  if (!th.valid) return;
  const int t0 = th.chunk * p.chunk, t1 = min(t0 + p.chunk, p.L), w = bb.window;
  const int head = th.c / (p.d / bb.H);
  const float* u = bb.u + static_cast<int64_t>(head) * w;
  float* du = bb.du + static_cast<int64_t>(head) * w;
  const bool last = th.chunk + 1 == dm.n_chunks;
  const int lanes = du_lanes(p, bb.H, dm.n_chunks);
  float P[2], Q[2], ref[2];  // the far part's running suffix sums; see bwd.cu
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
    float2 kk[kAftSub], vv[kAftSub];
    float lseF[kAftSub][2];
    ScanState st[2] = {saved_state(p, dm, th.b, t / kAftSub, th.c), saved_state(p, dm, th.b, t / kAftSub, th.c + 1)};
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        const int s = t + i;
        kk[i] = Pair<T>::load(p.k, kb + s * p.k_strides[1]);
        vv[i] = Pair<T>::load(p.v, vb + s * p.v_strides[1]);
        scan_add(st[0], kk[i].x, vv[i].x);
        scan_add(st[1], kk[i].y, vv[i].y);
        lseF[i][0] = st[0].m + __logf(st[0].s);
        lseF[i][1] = st[1].m + __logf(st[1].s);
        // dq of row s (its own lse, R saved by the forward).
        const float2 q2 = Pair<T>::load(p.q, qb + s * p.q_strides[1]), g2 = Pair<T>::load(bp.dy, gb + s * bp.dy_strides[1]);
        float2 lse, r;
        load_row(p, bb.rows, th.b, s, th.c, lse, r);
        const float sg0 = sigmoid(q2.x), sg1 = sigmoid(q2.y);
        Pair<T>::store(bp.dq, dqb + s * bp.dq_strides[1], g2.x * sg0 * r.x * (1.f - sg0), g2.y * sg1 * r.y * (1.f - sg1));
      }
    }
    // Far part, from the right: rows s + w and beyond.
    float dk[kAftSub][2], dv[kAftSub][2];
#pragma unroll
    for (int i = kAftSub - 1; i >= 0; --i) {
      if (t + i < t1) {
        const int s = t + i, row = s + w;
        float a[2] = {0.f, 0.f}, ar[2] = {0.f, 0.f};
        if (row < p.L) {
          const float2 q2 = Pair<T>::load(p.q, qb + row * p.q_strides[1]),
                       g2 = Pair<T>::load(bp.dy, gb + row * bp.dy_strides[1]);
          float2 lse, r;
          load_row(p, bb.rows, th.b, row, th.c, lse, r);
          a[0] = g2.x * sigmoid(q2.x) * __expf(lseF[i][0] - lse.x);
          a[1] = g2.y * sigmoid(q2.y) * __expf(lseF[i][1] - lse.y);
          ar[0] = a[0] * r.x;
          ar[1] = a[1] * r.y;
        }
        const float kx[2] = {kk[i].x, kk[i].y}, vx[2] = {vv[i].x, vv[i].y};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float f = __expf(lseF[i][h] - ref[h]);
          P[h] = fmaf(f, P[h], a[h]);
          Q[h] = fmaf(f, Q[h], ar[h]);
          ref[h] = lseF[i][h];
          const float e = __expf(kx[h] - lseF[i][h]);
          dv[i][h] = e * P[h];
          dk[i][h] = e * fmaf(vx[h], P[h], -Q[h]);
        }
      }
    }
    // Band part: rows r = t + rho, rho < w + 7, each read once for the 8
    // sources; the pair (r, t + i) has tap j = rho - i < w. Tap j's du sum is
    // complete after row t + j + 7; until then slot j % 8 of acc holds it, and
    // slot j % 8 of ring holds u_j (log2 units): one load per row. Groups of
    // 8 rows whose 64 pairs are all in the band and in range skip the checks.
    float acc[kAftSub], ring[kAftSub];
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      acc[i] = ring[i] = 0.f;
      kk[i] = make_float2(kk[i].x * kLog2e, kk[i].y * kLog2e);
    }
    const int n_rows = w + kAftSub - 1;
    const bool all_sources = t + kAftSub <= t1;
    for (int rho0 = 0; rho0 < n_rows; rho0 += kAftSub) {
      if (all_sources && rho0 >= kAftSub && rho0 + kAftSub <= w && t + rho0 + kAftSub <= p.L)
        band_rows<false, T>(bb, th.b, th.c, qb, gb, t, t1, rho0, n_rows, w, u, du, lanes, kk, vv, dk, dv, acc, ring);
      else
        band_rows<true, T>(bb, th.b, th.c, qb, gb, t, t1, rho0, n_rows, w, u, du, lanes, kk, vv, dk, dv, acc, ring);
    }
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        Pair<T>::store(bp.dk, dkb + (t + i) * bp.dk_strides[1], dk[i][0], dk[i][1]);
        Pair<T>::store(bp.dv, dvb + (t + i) * bp.dv_strides[1], dv[i][0], dv[i][1]);
      }
    }
  }
}

template <typename T>
void launch_band_fwd(const AftBandParams& bp, AftDType dtype, cudaStream_t stream) {
  AftSimpleParams scan = bp.scan;
  scan.y = nullptr;  // the un-biased scan's saved state only
  aft_simple_fwd(scan, dtype, stream);
  const AftSimpleParams& p = bp.scan;
  const int64_t threads = static_cast<int64_t>(p.B) * ((p.L + kAftSub - 1) / kAftSub) * (p.d / 2);
  aft_band_fwd_kernel<T><<<static_cast<int>((threads + kThreads - 1) / kThreads), kThreads, 0, stream>>>(bp);
  check_launch("aft_band_fwd_kernel");
}

template <typename T>
void launch_band_bwd(const AftBandBwdParams& bb, cudaStream_t stream) {
  const AftSimpleParams& p = bb.scan.fwd;
  const int n_chunks = (p.L + p.chunk - 1) / p.chunk;
  const int64_t threads = static_cast<int64_t>(p.B) * n_chunks * (p.d / 2);
  const int blocks = static_cast<int>((threads + kThreads - 1) / kThreads);
  aft_band_bwd_summary_kernel<T><<<blocks, kThreads, 0, stream>>>(bb);
  check_launch("aft_band_bwd_summary_kernel");
  launch_bwd_carry(bb.scan, stream);
  const int bwd_blocks = static_cast<int>((threads + kBandBwdThreads - 1) / kBandBwdThreads);
  aft_band_bwd_kernel<T><<<bwd_blocks, kBandBwdThreads, 0, stream>>>(bb);
  check_launch("aft_band_bwd_kernel");
}

void check_band(const AftSimpleParams& p, int H, int window, const char* name) {
  if (p.d % 2 != 0 || p.chunk % kAftSub != 0 || p.L < 1 || p.B < 1 || H < 1 || p.d % H != 0 ||
      (p.d / H) % 2 != 0 || window < 1) {
    throw std::invalid_argument(std::string(name) + ": needs L, B >= 1, window >= 1, H dividing d with d / H even, "
                                "and a chunk that is a multiple of " + std::to_string(kAftSub));
  }
}

}  // namespace

void aft_band_fwd(const AftBandParams& p, AftDType dtype, void* stream) {
  check_band(p.scan, p.H, p.window, "aft_band_fwd");
  auto s = static_cast<cudaStream_t>(stream);
  dtype == AftDType::kBFloat16 ? launch_band_fwd<__nv_bfloat16>(p, dtype, s) : launch_band_fwd<__half>(p, dtype, s);
}

void aft_band_bwd(const AftBandBwdParams& p, AftDType dtype, void* stream) {
  check_band(p.scan.fwd, p.H, p.window, "aft_band_bwd");
  auto s = static_cast<cudaStream_t>(stream);
  dtype == AftDType::kBFloat16 ? launch_band_bwd<__nv_bfloat16>(p, s) : launch_band_bwd<__half>(p, s);
}

}  // namespace longtrain::kernels
