// Causal AFT-simple, forward: a chunked two-level scan.
//
//   y_t = σ(q_t) ⊙ num_t / den_t,  num_t = Σ_{s<=t} exp(k_s - m_t) v_s,
//   den_t = Σ_{s<=t} exp(k_s - m_t),  m_t = max_{s<=t} k_s   (per channel)
//
// Three launches, each parallel over (batch, chunk of L, channel pair):
//   1. summary: each chunk's own (max, num, den), from k and v;
//   2. carry:   per (batch, channel), the exclusive scan of the summaries
//               across chunks (8 segments per channel, one CTA per 32 channels);
//   3. forward: each chunk restarts from its carry and scans its positions in
//               order, writing y and saving the state before every sub-chunk
//               of kAftSub positions for the backward.
// The per-position arithmetic of 3 is the sequential scan itself (scan.cuh), so
// y is the serial recurrence's result up to the association of chunk merges.
// Bytes: k, v read twice, q read once, y written once, plus the saved state
// (12 bytes per channel per kAftSub positions) and the small carries.
//
// Matches: model/aft.cpp aft_simple(q, k, v, causal = true).
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

int n_chunks_of(const AftSimpleParams& p) { return (p.L + p.chunk - 1) / p.chunk; }
int n_summaries_of(const AftSimpleParams& p) { return (p.L + aft_summary_chunk(p) - 1) / aft_summary_chunk(p); }

__device__ __forceinline__ int64_t carry_at(const AftSimpleParams& p, int n_chunks, int a, int b, int j, int c) {
  return ((static_cast<int64_t>(a) * p.B + b) * n_chunks + j) * p.d + c;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) aft_simple_summary_kernel(const AftSimpleParams p) {
  const int sc = aft_summary_chunk(p), n_chunks = (p.L + sc - 1) / sc;
  const ChunkThread th = chunk_thread(p.B, n_chunks, p.d);
  if (!th.valid) return;
  const int t0 = th.chunk * sc, t1 = min(t0 + sc, p.L);
  const int64_t kb = th.b * p.k_strides[0] + th.c, vb = th.b * p.v_strides[0] + th.c;
  ScanState s0 = empty_state(), s1 = empty_state();
  for (int t = t0; t < t1; t += kAftSub) {
    float2 kk[kAftSub], vv[kAftSub];
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {  // all loads of the sub-chunk in flight first
      if (t + i < t1) {
        kk[i] = Pair<T>::load(p.k, kb + (t + i) * p.k_strides[1]);
        vv[i] = Pair<T>::load(p.v, vb + (t + i) * p.v_strides[1]);
      }
    }
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        scan_add(s0, kk[i].x, vv[i].x);
        scan_add(s1, kk[i].y, vv[i].y);
      }
    }
  }
  float* out = p.summary;
  const ScanState st[2] = {s0, s1};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    out[carry_at(p, n_chunks, 0, th.b, th.chunk, th.c + h)] = st[h].m;
    out[carry_at(p, n_chunks, 1, th.b, th.chunk, th.c + h)] = st[h].n;
    out[carry_at(p, n_chunks, 2, th.b, th.chunk, th.c + h)] = st[h].s;
  }
}

// Exclusive scan across chunks: carry[j] = summary[0] ⊕ ... ⊕ summary[j-1].
// CTA (32 channels, kAftSegments segments of chunks); grid (d / 32, B). The
// summaries are read through a restrict pointer so that unrolled iterations
// keep several loads in flight (the loop is latency-bound, not bandwidth-bound).
__global__ void __launch_bounds__(32 * kAftSegments) aft_simple_carry_kernel(const AftSimpleParams p) {
  __shared__ ScanState seg_total[kAftSegments][32];
  const int n_chunks = (p.L + aft_summary_chunk(p) - 1) / aft_summary_chunk(p);
  const int lane = threadIdx.x, seg = threadIdx.y, c = blockIdx.x * 32 + lane, b = blockIdx.y;
  const int per_seg = (n_chunks + kAftSegments - 1) / kAftSegments;
  const int j0 = min(seg * per_seg, n_chunks), j1 = min(j0 + per_seg, n_chunks);
  const float* __restrict__ sm = p.summary;
  float* __restrict__ cm = p.carry;
  auto summary = [&](int j) {
    return ScanState{__ldg(sm + carry_at(p, n_chunks, 0, b, j, c)), __ldg(sm + carry_at(p, n_chunks, 1, b, j, c)),
                     __ldg(sm + carry_at(p, n_chunks, 2, b, j, c))};
  };
  ScanState total = empty_state();
  if (c < p.d) {
#pragma unroll 4
    for (int j = j0; j < j1; ++j) merge_state(total, summary(j));
  }
  seg_total[seg][lane] = total;
  __syncthreads();
  if (c >= p.d) return;
  ScanState run = empty_state();
  for (int z = 0; z < seg; ++z) merge_state(run, seg_total[z][lane]);
#pragma unroll 4
  for (int j = j0; j < j1; ++j) {
    const ScanState s = summary(j);
    cm[carry_at(p, n_chunks, 0, b, j, c)] = run.m;
    cm[carry_at(p, n_chunks, 1, b, j, c)] = run.n;
    cm[carry_at(p, n_chunks, 2, b, j, c)] = run.s;
    merge_state(run, s);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) aft_simple_fwd_kernel(const AftSimpleParams p) {
  const int n_chunks = (p.L + p.chunk - 1) / p.chunk, n_sub = (p.L + kAftSub - 1) / kAftSub;
  const ChunkThread th = chunk_thread(p.B, n_chunks, p.d);
  if (!th.valid) return;
  const int t0 = th.chunk * p.chunk, t1 = min(t0 + p.chunk, p.L);
  // The carry into this chunk is the one into its first summary chunk.
  const int sc = aft_summary_chunk(p), n_sum = (p.L + sc - 1) / sc, js = t0 / sc;
  ScanState st[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st[h] = {p.carry[carry_at(p, n_sum, 0, th.b, js, th.c + h)], p.carry[carry_at(p, n_sum, 1, th.b, js, th.c + h)],
             p.carry[carry_at(p, n_sum, 2, th.b, js, th.c + h)]};
  }
  const int64_t qb = th.b * p.q_strides[0] + th.c, kb = th.b * p.k_strides[0] + th.c,
                vb = th.b * p.v_strides[0] + th.c, yb = th.b * p.y_strides[0] + th.c;
  for (int t = t0; t < t1; t += kAftSub) {
    const int sub = t / kAftSub;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t at = (static_cast<int64_t>(th.b) * n_sub + sub) * p.d + th.c + h,
                    plane = static_cast<int64_t>(p.B) * n_sub * p.d;
      p.state[at] = st[h].m;
      p.state[at + plane] = st[h].n;
      p.state[at + 2 * plane] = st[h].s;
    }
    typename Pair<T>::V qq[kAftSub], kk[kAftSub], vv[kAftSub];
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        if (p.y != nullptr) qq[i] = Pair<T>::load_raw(p.q, qb + (t + i) * p.q_strides[1]);
        kk[i] = Pair<T>::load_raw(p.k, kb + (t + i) * p.k_strides[1]);
        vv[i] = Pair<T>::load_raw(p.v, vb + (t + i) * p.v_strides[1]);
      }
    }
#pragma unroll
    for (int i = 0; i < kAftSub; ++i) {
      if (t + i < t1) {
        const float2 k2 = Pair<T>::unpack(kk[i]), v2 = Pair<T>::unpack(vv[i]);
        scan_add(st[0], k2.x, v2.x);
        scan_add(st[1], k2.y, v2.y);
        if (p.y != nullptr) {  // null: only the saved states (the banded variants' far part)
          const float2 q2 = Pair<T>::unpack(qq[i]);
          Pair<T>::store(p.y, yb + (t + i) * p.y_strides[1], sigmoid(q2.x) * (st[0].n / st[0].s),
                         sigmoid(q2.y) * (st[1].n / st[1].s));
        }
      }
    }
  }
}

template <typename T>
void launch_fwd(const AftSimpleParams& p, cudaStream_t stream) {
  auto blocks_for = [&](int n_chunks) {
    const int64_t threads = static_cast<int64_t>(p.B) * n_chunks * (p.d / 2);
    return static_cast<int>((threads + kThreads - 1) / kThreads);
  };
  const int blocks = blocks_for(n_chunks_of(p));
  aft_simple_summary_kernel<T><<<blocks_for(n_summaries_of(p)), kThreads, 0, stream>>>(p);
  check_launch("aft_simple_summary_kernel");
  aft_simple_carry_kernel<<<dim3((p.d + 31) / 32, p.B), dim3(32, kAftSegments), 0, stream>>>(p);
  check_launch("aft_simple_carry_kernel");
  aft_simple_fwd_kernel<T><<<blocks, kThreads, 0, stream>>>(p);
  check_launch("aft_simple_fwd_kernel");
}

}  // namespace

void aft_simple_fwd(const AftSimpleParams& p, AftDType dtype, void* stream) {
  if (p.d % 2 != 0 || p.chunk % kAftSub != 0 || p.L < 1 || p.B < 1) {
    throw std::invalid_argument("aft_simple_fwd: needs even d, L >= 1, B >= 1 and a chunk that is a multiple of " +
                                std::to_string(kAftSub));
  }
  if (aft_summary_chunk(p) % kAftSub != 0 || p.chunk % aft_summary_chunk(p) != 0) {
    throw std::invalid_argument("aft_simple_fwd: the summary chunk must be a multiple of " + std::to_string(kAftSub) +
                                " that divides the chunk");
  }
  auto s = static_cast<cudaStream_t>(stream);
  dtype == AftDType::kBFloat16 ? launch_fwd<__nv_bfloat16>(p, s) : launch_fwd<__half>(p, s);
}

}  // namespace longtrain::kernels
