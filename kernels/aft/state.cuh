// Device helpers shared by the AFT kernels that read the forward's saved scan
// state (bwd.cu, band.cu), and the launch check.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/aft/params.h"
#include "kernels/aft/scan.cuh"
#include "kernels/launch_check.h"

namespace longtrain::kernels::aft {

// The backward's scan across chunk summaries (bwd.cu), shared by the banded variants.
void launch_bwd_carry(const AftSimpleBwdParams& bp, cudaStream_t stream);

struct Dims {
  int n_chunks, n_sub;
  int64_t plane;  // elements per plane of the saved state: B * n_sub * d
};

__device__ __forceinline__ Dims dims_of(const AftSimpleParams& p) {
  Dims d;
  d.n_chunks = (p.L + p.chunk - 1) / p.chunk;
  d.n_sub = (p.L + kAftSub - 1) / kAftSub;
  d.plane = static_cast<int64_t>(p.B) * d.n_sub * p.d;
  return d;
}

// The saved forward state before sub-chunk `sub` of channel c.
__device__ __forceinline__ ScanState saved_state(const AftSimpleParams& p, const Dims& dm, int b, int sub, int c) {
  const int64_t at = (static_cast<int64_t>(b) * dm.n_sub + sub) * p.d + c;
  return {p.state[at], p.state[at + dm.plane], p.state[at + 2 * dm.plane]};
}

// lse of a state: -inf for the empty one (nothing before the first chunk).
__device__ __forceinline__ float lse_of(const ScanState& s) {
  return s.m == -INFINITY ? -INFINITY : s.m + __logf(s.s);
}

// The reference of chunk j's summaries: lse at the end of chunk j - 1.
__device__ __forceinline__ float chunk_ref(const AftSimpleParams& p, const Dims& dm, int b, int j, int c) {
  return lse_of(saved_state(p, dm, b, j * (p.chunk / kAftSub), c));
}

// D_i = exp(ref_i - ref_{i+1}) <= 1: how P at chunk i + 1's start carries into
// chunk i's reference; 0 for the last chunk (its carry is 0).
__device__ __forceinline__ float decay(const AftSimpleParams& p, const Dims& dm, int b, int i, int c) {
  return i + 1 < dm.n_chunks ? __expf(chunk_ref(p, dm, b, i, c) - chunk_ref(p, dm, b, i + 1, c)) : 0.f;
}

__device__ __forceinline__ int64_t chunk_at(const AftSimpleParams& p, const Dims& dm, int a, int b, int j, int c) {
  return ((static_cast<int64_t>(a) * p.B + b) * dm.n_chunks + j) * p.d + c;
}

// The summary kernels store D_j beside W_j (plane 2 of wsum), so that the
// carry's sequential chain is loads and FMAs only (computing D there, from two
// saved states, a log and an exp per step, made it 46 of 354 us at 16K).
// Chunk 0's D is never used (nothing precedes it).
__device__ __forceinline__ void store_decay(const AftSimpleBwdParams& bp, const Dims& dm, int b, int j, int c) {
  bp.wsum[chunk_at(bp.fwd, dm, 2, b, j, c)] = j > 0 ? decay(bp.fwd, dm, b, j, c) : 0.f;
}

}  // namespace longtrain::kernels::aft
