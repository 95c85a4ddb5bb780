// Block-sparse flash attention, backward (FlashAttention-2 form, recomputing P
// from the saved logsumexp instead of storing it):
//
//   P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,
//   dS = P * (dP - delta),  delta_i = rowsum(dO_i * O_i) - dlse_i,
//   dQ = scale * dS K,  dK = scale * dS^T Q.
//
// Three launches: `delta` (one warp per row); the dQ kernel, one CTA per query
// tile walking the layout's rows; the dK/dV kernel, one CTA per work item of
// the transposed columns (make_plan: a key tile, or a piece of a column far
// longer than the rest). Every gradient is written once, by one CTA, without
// atomics, except the split columns (global keys), whose pieces add fp32
// partials atomically and a fourth launch writes them out: only those rows
// depend on the order of float additions. A gradient of lse
// (when the caller merges this attention with other keys, e.g. Longformer's
// global columns) enters through delta, since d lse_i / d S_ij = P_ij.
//
// Matches: model/sparse_attention.cpp differentiated by LibTorch autograd.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/math_constants.h"
#include "kernels/sparse_attention/tile.cuh"

namespace longtrain::kernels {
namespace {

using namespace tile;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

void check_launch(const char* name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(err));
}

// delta[b, h, i] = sum_d dO * O - dlse: D / 8 lanes per row, 16-byte loads
// (rows are 16-byte aligned, op.cpp). One warp per row with 2-byte loads
// took 0.19 ms per layer of the 134M sliding step (B 16, H 12, L 4096) on
// the H100, 3x the time to read O and dO.
template <typename T, int D>
__global__ void __launch_bounds__(256) sparse_attention_bwd_delta_kernel(const SparseAttentionBwdParams p) {
  constexpr int kLanes = D / 8, kRows = 256 / kLanes;
  const int bh = blockIdx.y, b = bh / p.fwd.H, h = bh % p.fwd.H;
  const int row = blockIdx.x * kRows + threadIdx.x / kLanes, part = threadIdx.x % kLanes;
  float acc = 0.f;
  if (row < p.fwd.L) {
    const T* o = static_cast<const T*>(p.fwd.o) + b * p.fwd.o_strides[0] + h * p.fwd.o_strides[1] +
                 static_cast<int64_t>(row) * p.fwd.o_strides[2] + part * 8;
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_strides[0] + h * p.do_strides[1] +
                    static_cast<int64_t>(row) * p.do_strides[2] + part * 8;
    const uint4 ov = *reinterpret_cast<const uint4*>(o), dv = *reinterpret_cast<const uint4*>(dout);
    const T* oe = reinterpret_cast<const T*>(&ov);
    const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc += static_cast<float>(oe[j]) * static_cast<float>(de[j]);
  }
#pragma unroll
  for (int off = kLanes / 2; off; off /= 2) acc += __shfl_xor_sync(0xffffffff, acc, off);
  const int64_t i = static_cast<int64_t>(bh) * p.fwd.L + row;
  if (row < p.fwd.L && part == 0) p.delta[i] = acc - (p.dlse ? p.dlse[i] : 0.f);
}

// dQ: one CTA per (query tile, batch * head), 16 query rows per warp.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 3 : 1) sparse_attention_bwd_dq_kernel(const SparseAttentionBwdParams bp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SparseAttentionParams& p = bp.fwd;
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + Smem<D>::kTileElems;
  T* ks = dos + Smem<D>::kTileElems;  // [2]
  T* vs = ks + 2 * Smem<D>::kTileElems;  // [2]

  const int qt = p.layout.row_order[blockIdx.y], bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const SparseLayoutParams& lay = p.layout;
  const int layout = lay.head_layout[h];
  const int v0 = lay.row_ptr[layout * (lay.n_tiles + 1) + qt], v1 = lay.row_ptr[layout * (lay.n_tiles + 1) + qt + 1];
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const T* dout = static_cast<const T*>(bp.dout) + b * bp.do_strides[0] + h * bp.do_strides[1];
  const int row_a = warp * 16 + g, row_b = row_a + 8;
  const float scale_log2 = p.scale * kLog2e;

  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = qt * kTile + (r ? row_b : row_a);
    const int64_t i = static_cast<int64_t>(bh) * p.L + row;
    lse2[r] = row < p.L ? p.lse[i] * kLog2e : INFINITY;
    delta[r] = row < p.L ? bp.delta[i] : 0.f;
  }

  load_tile_async<D, kThreads>(qs, q, p.q_strides[2], qt * kTile, p.L, tid);
  load_tile_async<D, kThreads>(dos, dout, bp.do_strides[2], qt * kTile, p.L, tid);
  cp_async_commit();
  if (v0 < v1) {
    load_tile_async<D, kThreads>(ks, k, p.k_strides[2], lay.cols[v0] * kTile, p.L, tid);
    load_tile_async<D, kThreads>(vs, v, p.v_strides[2], lay.cols[v0] * kTile, p.L, tid);
  }
  cp_async_commit();
  cp_async_wait<1>();  // Q and dO landed
  __syncthreads();
  // v3: the warp's Q and dO A-fragments stay in registers at D = 64 (as in
  // the forward); at D = 128 they would spill beside the dQ accumulators.
  constexpr bool kHoldQ = D == 64;
  uint32_t qa[kHoldQ ? D / 16 : 1][4], da[kHoldQ ? D / 16 : 1][4];
  if constexpr (kHoldQ) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      load_a<D>(qa[kk], qs, warp * 16, kk * 16, lane);
      load_a<D>(da[kk], dos, warp * 16, kk * 16, lane);
    }
  }

  float dq[D / 8][4] = {};
  for (int visit = v0; visit < v1; ++visit) {
    const int buf = (visit - v0) & 1;
    if (visit + 1 < v1) {
      const int next = lay.cols[visit + 1];
      load_tile_async<D, kThreads>(ks + (buf ^ 1) * Smem<D>::kTileElems, k, p.k_strides[2], next * kTile, p.L, tid);
      load_tile_async<D, kThreads>(vs + (buf ^ 1) * Smem<D>::kTileElems, v, p.v_strides[2], next * kTile, p.L, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* kb = ks + buf * Smem<D>::kTileElems;
    const T* vb = vs + buf * Smem<D>::kTileElems;

    const int kt = lay.cols[visit];
    const int mask_index = lay.row_mask[visit];
    const uint64_t* mask = mask_index >= 0 ? lay.masks + static_cast<int64_t>(mask_index) * kTile : nullptr;
    uint64_t keep = ~0ull;
    if (kt == lay.n_tiles - 1 && p.L % kTile) keep = (1ull << (p.L % kTile)) - 1;
    if (lay.exclude) keep &= ~lay.exclude[static_cast<int64_t>(b) * lay.n_tiles + kt];
    const uint64_t words[2] = {mask ? mask[row_a] & keep : keep, mask ? mask[row_b] & keep : keep};

    // Keys 16 at a time: S = Q K^T and dP = dO V^T (16 rows x 16 keys),
    // dS = P * (dP - delta), dQ += dS K.
#pragma unroll 1
    for (int k0 = 0; k0 < kTile; k0 += 16) {
      float s[2][4] = {}, dp[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qf[4], df[4], bf[4];
        if constexpr (kHoldQ) {
#pragma unroll
          for (int j = 0; j < 4; ++j) qf[j] = qa[kk][j], df[j] = da[kk][j];
        } else {
          load_a<D>(qf, qs, warp * 16, kk * 16, lane);
          load_a<D>(df, dos, warp * 16, kk * 16, lane);
        }
        load_b_nk<D>(bf, kb, k0, kk * 16, lane);
        mma<T>(s[0], qf, bf[0], bf[1]);
        mma<T>(s[1], qf, bf[2], bf[3]);
        load_b_nk<D>(bf, vb, k0, kk * 16, lane);
        mma<T>(dp[0], df, bf[0], bf[1]);
        mma<T>(dp[1], df, bf[2], bf[3]);
      }
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int c = k0 + nb * 8 + 2 * t + (i & 1), r = i >> 1;
          const bool ok = (words[r] >> c) & 1ull;
          const float pr = ok ? exp2f(s[nb][i] * scale_log2 - lse2[r]) : 0.f;
          s[nb][i] = pr * (dp[nb][i] - delta[r]);
        }
      }
      const uint32_t a[4] = {Pack<T>::from(s[0][0], s[0][1]), Pack<T>::from(s[0][2], s[0][3]),
                             Pack<T>::from(s[1][0], s[1][1]), Pack<T>::from(s[1][2], s[1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bf[4];
        load_b_kn<D>(bf, kb, k0, dn * 16, lane);
        mma<T>(dq[2 * dn], a, bf[0], bf[1]);
        mma<T>(dq[2 * dn + 1], a, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  T* out = static_cast<T*>(bp.dq) + b * bp.dq_strides[0] + h * bp.dq_strides[1];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = qt * kTile + (r ? row_b : row_a);
    if (row >= p.L) continue;
    T* dst = out + static_cast<int64_t>(row) * bp.dq_strides[2];
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      *reinterpret_cast<uint32_t*>(dst + dn * 8 + 2 * t) =
          Pack<T>::from(dq[dn][2 * r] * p.scale, dq[dn][2 * r + 1] * p.scale);
    }
  }
}

// dK, dV: one CTA per (key tile, batch * head), 16 keys per warp; the query
// tiles that visit this key tile come from the transposed layout.
// v3: the warp's K and V A-fragments stay in registers for the whole kernel
// (they were re-read from shared memory for every 32 queries), and queries
// are taken 16 at a time, so S^T and dP^T are 8 registers each. At D = 64
// this removes the 20-byte spill of v2 at the 3-CTA cap and one fifth of the
// ldmatrix traffic (64 instead of 80 per visit per warp, for 128 mma).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 3 : 1) sparse_attention_bwd_dkdv_kernel(const SparseAttentionBwdParams bp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SparseAttentionParams& p = bp.fwd;
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + Smem<D>::kTileElems;
  T* qs = vs + Smem<D>::kTileElems;       // [2]
  T* dos = qs + 2 * Smem<D>::kTileElems;  // [2]
  float* lse_s = reinterpret_cast<float*>(dos + 2 * Smem<D>::kTileElems);  // [2][64], log2 domain
  float* delta_s = lse_s + 2 * kTile;                                      // [2][64]

  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const SparseLayoutParams& lay = p.layout;
  const int layout = lay.head_layout[h];
  const int32_t* item = lay.col_items + (static_cast<int64_t>(layout) * lay.n_col_items + blockIdx.y) * 4;
  const int kt = item[0], v0 = item[1], v1 = item[2];
  if (kt < 0) return;  // this layout has fewer work items than the grid
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const T* dout = static_cast<const T*>(bp.dout) + b * bp.do_strides[0] + h * bp.do_strides[1];
  const float* lse = p.lse + static_cast<int64_t>(bh) * p.L;
  const float* delta = bp.delta + static_cast<int64_t>(bh) * p.L;
  const int key_a = warp * 16 + g, key_b = key_a + 8;  // this thread's two keys in the tile
  const float scale_log2 = p.scale * kLog2e;

  uint64_t keep = ~0ull;
  if (lay.exclude) keep &= ~lay.exclude[static_cast<int64_t>(b) * lay.n_tiles + kt];
  const bool key_ok[2] = {((keep >> key_a) & 1ull) != 0, ((keep >> key_b) & 1ull) != 0};

  auto load_rows = [&](int visit, int buf) {
    const int qtile = lay.rows[visit];
    load_tile_async<D, kThreads>(qs + buf * Smem<D>::kTileElems, q, p.q_strides[2], qtile * kTile, p.L, tid);
    load_tile_async<D, kThreads>(dos + buf * Smem<D>::kTileElems, dout, bp.do_strides[2], qtile * kTile, p.L, tid);
    if (tid < kTile) {
      const int row = qtile * kTile + tid;
      lse_s[buf * kTile + tid] = row < p.L ? lse[row] * kLog2e : INFINITY;
      delta_s[buf * kTile + tid] = row < p.L ? delta[row] : 0.f;
    }
  };
  load_tile_async<D, kThreads>(ks, k, p.k_strides[2], kt * kTile, p.L, tid);
  load_tile_async<D, kThreads>(vs, v, p.v_strides[2], kt * kTile, p.L, tid);
  cp_async_commit();
  if (v0 < v1) load_rows(v0, 0);
  cp_async_commit();
  cp_async_wait<1>();  // K and V landed (the first query tile may still be in flight)
  __syncthreads();
  // At D = 128 the fragments (64 registers) beside the dK and dV
  // accumulators (128) would spill: they are re-read from shared memory.
  constexpr bool kHoldKV = D == 64;
  constexpr int kQ = 16;  // queries per step
  uint32_t ka[kHoldKV ? D / 16 : 1][4], va[kHoldKV ? D / 16 : 1][4];
  if constexpr (kHoldKV) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      load_a<D>(ka[kk], ks, warp * 16, kk * 16, lane);
      load_a<D>(va[kk], vs, warp * 16, kk * 16, lane);
    }
  }

  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  for (int visit = v0; visit < v1; ++visit) {
    const int buf = (visit - v0) & 1;
    if (visit + 1 < v1) {
      load_rows(visit + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* qb = qs + buf * Smem<D>::kTileElems;
    const T* db = dos + buf * Smem<D>::kTileElems;
    const float* lse_b = lse_s + buf * kTile;
    const float* delta_b = delta_s + buf * kTile;
    const int mask_index = lay.col_mask[visit];
    const uint64_t* mask = mask_index >= 0 ? lay.masks + static_cast<int64_t>(mask_index) * kTile : nullptr;

#pragma unroll 1
    for (int q0 = 0; q0 < kTile; q0 += kQ) {
      // S^T = K Q^T and dP^T = V dO^T: 16 keys x kQ queries.
      float s[kQ / 8][4] = {}, dp[kQ / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t kf[4], vf[4];
        if constexpr (kHoldKV) {
#pragma unroll
          for (int j = 0; j < 4; ++j) kf[j] = ka[kk][j], vf[j] = va[kk][j];
        } else {
          load_a<D>(kf, ks, warp * 16, kk * 16, lane);
          load_a<D>(vf, vs, warp * 16, kk * 16, lane);
        }
#pragma unroll
        for (int np = 0; np < kQ / 16; ++np) {
          uint32_t bf[4];
          load_b_nk<D>(bf, qb, q0 + np * 16, kk * 16, lane);
          mma<T>(s[2 * np], kf, bf[0], bf[1]);
          mma<T>(s[2 * np + 1], kf, bf[2], bf[3]);
          load_b_nk<D>(bf, db, q0 + np * 16, kk * 16, lane);
          mma<T>(dp[2 * np], vf, bf[0], bf[1]);
          mma<T>(dp[2 * np + 1], vf, bf[2], bf[3]);
        }
      }
      // P^T (into s) and dS^T (into dp); this thread's queries are c and c + 1.
#pragma unroll
      for (int nb = 0; nb < kQ / 8; ++nb) {
        const int c = q0 + nb * 8 + 2 * t;
        const float2 lse2 = *reinterpret_cast<const float2*>(lse_b + c);
        const float2 del2 = *reinterpret_cast<const float2*>(delta_b + c);
        uint64_t mw0 = ~0ull, mw1 = ~0ull;
        if (mask) mw0 = mask[c], mw1 = mask[c + 1];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = i >> 1, key = r ? key_b : key_a;
          const bool ok = key_ok[r] && ((((i & 1) ? mw1 : mw0) >> key) & 1ull);
          const float pr = ok ? exp2f(s[nb][i] * scale_log2 - ((i & 1) ? lse2.y : lse2.x)) : 0.f;
          s[nb][i] = pr;
          dp[nb][i] = pr * (dp[nb][i] - ((i & 1) ? del2.y : del2.x));
        }
      }
      // dV += P^T dO and dK += dS^T Q over these kQ queries.
#pragma unroll
      for (int kk = 0; kk < kQ / 16; ++kk) {
        const uint32_t pa[4] = {Pack<T>::from(s[2 * kk][0], s[2 * kk][1]), Pack<T>::from(s[2 * kk][2], s[2 * kk][3]),
                                Pack<T>::from(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                Pack<T>::from(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const uint32_t da[4] = {Pack<T>::from(dp[2 * kk][0], dp[2 * kk][1]),
                                Pack<T>::from(dp[2 * kk][2], dp[2 * kk][3]),
                                Pack<T>::from(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                Pack<T>::from(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t bf[4];
          load_b_kn<D>(bf, db, q0 + kk * 16, dn * 16, lane);
          mma<T>(dv[2 * dn], pa, bf[0], bf[1]);
          mma<T>(dv[2 * dn + 1], pa, bf[2], bf[3]);
          load_b_kn<D>(bf, qb, q0 + kk * 16, dn * 16, lane);
          mma<T>(dk[2 * dn], da, bf[0], bf[1]);
          mma<T>(dk[2 * dn + 1], da, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  // Re-read here rather than held through the loop (registers are at the cap).
  const int32_t* item_end = lay.col_items + (static_cast<int64_t>(lay.head_layout[h]) * lay.n_col_items + blockIdx.y) * 4;
  const int slot = __ldcg(item_end + 3), kt_out = __ldcg(item_end);
  if (slot >= 0) {  // a piece of a split column: fp32 partials, written out by the finish kernel
    float* acc = bp.dkv_acc + (static_cast<int64_t>(bh) * lay.n_split + slot) * 2 * kTile * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = r ? key_b : key_a;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        float* a = acc + key * D + dn * 8 + 2 * t;
        atomicAdd(a, dk[dn][2 * r] * p.scale);
        atomicAdd(a + 1, dk[dn][2 * r + 1] * p.scale);
        atomicAdd(a + kTile * D, dv[dn][2 * r]);
        atomicAdd(a + kTile * D + 1, dv[dn][2 * r + 1]);
      }
    }
    return;
  }
  T* dk_out = static_cast<T*>(bp.dk) + b * bp.dk_strides[0] + h * bp.dk_strides[1];
  T* dv_out = static_cast<T*>(bp.dv) + b * bp.dv_strides[0] + h * bp.dv_strides[1];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = kt_out * kTile + (r ? key_b : key_a);
    if (row >= p.L) continue;
    T* dkr = dk_out + static_cast<int64_t>(row) * bp.dk_strides[2];
    T* dvr = dv_out + static_cast<int64_t>(row) * bp.dv_strides[2];
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      *reinterpret_cast<uint32_t*>(dkr + dn * 8 + 2 * t) =
          Pack<T>::from(dk[dn][2 * r] * p.scale, dk[dn][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dvr + dn * 8 + 2 * t) = Pack<T>::from(dv[dn][2 * r], dv[dn][2 * r + 1]);
    }
  }
}

// Split columns: the summed fp32 partials -> dK, dV rows (one CTA per slot).
template <typename T, int D>
__global__ void __launch_bounds__(256) sparse_attention_bwd_split_finish_kernel(const SparseAttentionBwdParams bp) {
  const SparseAttentionParams& p = bp.fwd;
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H, slot = blockIdx.y;
  const int kt = p.layout.split_cols[p.layout.head_layout[h] * p.layout.n_split + slot];
  if (kt < 0) return;
  const float* acc = bp.dkv_acc + (static_cast<int64_t>(bh) * p.layout.n_split + slot) * 2 * kTile * D;
  T* dk_out = static_cast<T*>(bp.dk) + b * bp.dk_strides[0] + h * bp.dk_strides[1];
  T* dv_out = static_cast<T*>(bp.dv) + b * bp.dv_strides[0] + h * bp.dv_strides[1];
  for (int e = 2 * threadIdx.x; e < kTile * D; e += 2 * blockDim.x) {
    const int key = e / D, col = e % D, row = kt * kTile + key;
    if (row >= p.L) continue;
    *reinterpret_cast<uint32_t*>(dk_out + static_cast<int64_t>(row) * bp.dk_strides[2] + col) =
        Pack<T>::from(acc[e], acc[e + 1]);
    *reinterpret_cast<uint32_t*>(dv_out + static_cast<int64_t>(row) * bp.dv_strides[2] + col) =
        Pack<T>::from(acc[kTile * D + e], acc[kTile * D + e + 1]);
  }
}

template <typename T, int D>
void launch_bwd(const SparseAttentionBwdParams& p, cudaStream_t stream) {
  const int bh = p.fwd.B * p.fwd.H;
  constexpr int kDeltaRows = 256 / (D / 8);
  sparse_attention_bwd_delta_kernel<T, D><<<dim3((p.fwd.L + kDeltaRows - 1) / kDeltaRows, bh), 256, 0, stream>>>(p);
  check_launch("sparse_attention_bwd_delta_kernel");

  constexpr int dq_smem = 6 * Smem<D>::kTileElems * sizeof(T);
  auto dq_kernel = sparse_attention_bwd_dq_kernel<T, D>;
  cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dq_smem);
  dq_kernel<<<dim3(bh, p.fwd.layout.n_tiles), kThreads, dq_smem, stream>>>(p);
  check_launch("sparse_attention_bwd_dq_kernel");

  constexpr int dkdv_smem = 6 * Smem<D>::kTileElems * sizeof(T) + 4 * kTile * sizeof(float);
  auto dkdv_kernel = sparse_attention_bwd_dkdv_kernel<T, D>;
  cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dkdv_smem);
  dkdv_kernel<<<dim3(bh, p.fwd.layout.n_col_items), kThreads, dkdv_smem, stream>>>(p);
  check_launch("sparse_attention_bwd_dkdv_kernel");
  if (p.fwd.layout.n_split > 0) {
    sparse_attention_bwd_split_finish_kernel<T, D><<<dim3(bh, p.fwd.layout.n_split), 256, 0, stream>>>(p);
    check_launch("sparse_attention_bwd_split_finish_kernel");
  }
}

}  // namespace

void sparse_attention_bwd(const SparseAttentionBwdParams& p, DType dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.fwd.D != 64 && p.fwd.D != 128) throw std::invalid_argument("sparse_attention_bwd: head dim must be 64 or 128");
  if (dtype == DType::kBFloat16) {
    p.fwd.D == 64 ? launch_bwd<__nv_bfloat16, 64>(p, s) : launch_bwd<__nv_bfloat16, 128>(p, s);
  } else {
    p.fwd.D == 64 ? launch_bwd<__half, 64>(p, s) : launch_bwd<__half, 128>(p, s);
  }
}

}  // namespace longtrain::kernels
