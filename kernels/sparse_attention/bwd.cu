// Block-sparse flash attention, backward (FlashAttention-2 form, recomputing P
// from the saved logsumexp instead of storing it):
//
//   P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,
//   dS = P * (dP - delta),  delta_i = rowsum(dO_i * O_i) - dlse_i,
//   dQ = scale * dS K,  dK = scale * dS^T Q.
//
// Two launches: the dQ kernel, one CTA per query tile walking the layout's
// rows (or, when op.h's split_dq says so, per piece of a row far longer than
// the rest, each piece writing an fp32 partial that the last piece to finish
// sums in order), which also computes delta for its rows; the dK/dV kernel,
// one CTA per work item of the transposed columns (make_plan: a key tile, or
// a piece of a column far longer than the rest), launched as the dQ kernel's
// programmatic dependent (its CTAs start in the dQ kernel's last wave and
// wait for it only before they read delta). Every gradient is written once,
// by one CTA, without atomics, except the split columns (global keys), whose
// pieces add fp32 partials atomically and whose last piece writes them out:
// only those rows depend on the order of float additions. A gradient of lse (when
// the caller merges this attention with other keys, e.g. Longformer's global
// columns) enters through delta, since d lse_i / d S_ij = P_ij.
//
// Matches: model/sparse_attention.cpp differentiated by LibTorch autograd.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/launch_check.h"
#include "kernels/math_constants.h"
#include "kernels/pdl.cuh"
#include "kernels/sparse_attention/tile.cuh"
#include "kernels/swizzle.h"
#include "kernels/wgmma.cuh"

namespace longtrain::kernels {
namespace {

using namespace tile;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

// The dK/dV epilogue: a split column's piece adds fp32 partials into its
// slot (its last piece writes them out); a whole column writes its rows.
template <typename T, int D>
__device__ __forceinline__ void write_dkdv(const SparseAttentionBwdParams& bp, const float (&dk)[D / 8][4],
                                           const float (&dv)[D / 8][4], int bh, int b, int h, int slot, int kt_out,
                                           int key_a, int key_b, int t) {
  const SparseAttentionParams& p = bp.fwd;
  const SparseLayoutParams& lay = p.layout;
  if (slot >= 0) {  // a piece of a split column: fp32 partials, written out by the last piece
    float* acc = bp.dkv_acc + (static_cast<int64_t>(bh) * lay.col_work.n_split + slot) * 2 * kTile * D;
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

// The two score products of a backward visit, s = A Bᵀ and dp = C Eᵀ (64 x 64
// over D, every operand a K-major swizzled tile at shared address a, b, c,
// e), issued as two groups; returns once s has landed, dp still in flight
// (wg::wait<0>() and fence_operand(dp) before reading it).
template <typename T, int D>
__device__ __forceinline__ void score_products(float (&s)[kTile / 8][4], float (&dp)[kTile / 8][4], uint32_t a,
                                               uint32_t b, uint32_t c, uint32_t e) {
  auto nk = [](uint32_t tile) { return [tile](int kk) { return wg::desc_nk<kTile>(tile, kk); }; };
  wg::fence();
  wg::issue_ss<false, false, D / 16, T, true>(s, nk(a), nk(b));
  wg::commit();
  wg::issue_ss<false, false, D / 16, T, true>(dp, nk(c), nk(e));
  wg::commit();
  wg::wait<1>();
  wg::fence_operand(s);
}

// v5: the products as warpgroup instructions (kernels/wgmma.cuh), as in the
// forward (v4): the 4 warps are one warpgroup, the tiles sit in shared memory
// in swizzle.h's layout and are read by the tensor cores through descriptors
// (once per CTA; mma.sync loaded them once per warp), the two score products
// of a visit are issued together, and P and dS go from the accumulators to
// the A registers of the next product. A fragments are never held across
// visits (the register-A fault of v4's first forward, NOTES.md).

// dQ: one CTA per (query tile, batch * head), 16 query rows per warp.
template <typename T, int D, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) sparse_attention_bwd_dq_kernel(const SparseAttentionBwdParams bp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int E = WgSmem<D>::kTileElems;
  const SparseAttentionParams& p = bp.fwd;
  T* qs = align_1024<T>(smem_raw);
  T* dos = qs + E;
  T* ks = dos + E;          // [kStages]
  T* vs = ks + kStages * E;  // [kStages]
  StageMeta* meta = reinterpret_cast<StageMeta*>(vs + kStages * E);

  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const SparseLayoutParams& lay = p.layout;
  // The dK/dV kernel may be scheduled from here (launch_bwd): it waits for
  // this grid's end before it reads delta.
  pdl::let_next_grid_launch();
  const int32_t* item = work_item(lay.dq_work, lay, h);
  const int qt = item[0], v0 = item[1], v1 = item[2];
  if (qt < 0) return;  // this layout has fewer work items than the grid
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const T* dout = static_cast<const T*>(bp.dout) + b * bp.do_strides[0] + h * bp.do_strides[1];
  const int row_a = warp * 16 + g, row_b = row_a + 8;
  const float scale_log2 = p.scale * kLog2e;

  auto load = [&](T* tile, const T* src, int64_t stride, int tr) {
    load_tile_async<D, kThreads>(tile, src, stride, tr * kTile, p.L, tid);
  };
  // The O tile, for delta, goes to the last stage's V buffer: prime_kv
  // leaves it empty, and the loop's first request refills it only after the
  // barrier that closes delta below.
  T* os = vs + (kStages - 1) * E;
  load(qs, q, p.q_strides[2], qt);
  load(dos, dout, bp.do_strides[2], qt);
  load(os, static_cast<const T*>(p.o) + b * p.o_strides[0] + h * p.o_strides[1], p.o_strides[2], qt);
  VisitRef ahead = prime_kv<D, kThreads>(ks, vs, meta, k, v, p, first_visit(item), v0, v1, tid);

  // delta = rowsum(dO * O) - dlse of this thread's two rows, written out for
  // the dK/dV kernel that runs next (v5; a kernel of its own before), from
  // the O and dO tiles in shared memory, each lane of the quad summing D / 4
  // columns. (v7b: O and dO had been read from global memory here, and
  // those loads' latency led the kernel's stall samples, ncu.) lse and dlse
  // are loaded first, to land while the copies do.
  float lse2[2], delta[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = qt * kTile + (r ? row_b : row_a);
    const int64_t i = static_cast<int64_t>(bh) * p.L + row;
    lse2[r] = row < p.L ? p.lse[i] * kLog2e : INFINITY;
    dl[r] = row < p.L && bp.dlse ? bp.dlse[i] : 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rt = r ? row_b : row_a, row = qt * kTile + rt;
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      const int at = swizzled_offset<kTile>(rt, t * (D / 4) + 8 * j);
      const uint4 ov = *reinterpret_cast<const uint4*>(os + at), dv = *reinterpret_cast<const uint4*>(dos + at);
      const uint32_t* ow = reinterpret_cast<const uint32_t*>(&ov);
      const uint32_t* dw = reinterpret_cast<const uint32_t*>(&dv);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 of = Pack<T>::to(ow[e]), df = Pack<T>::to(dw[e]);
        acc = fmaf(of.x, df.x, fmaf(of.y, df.y, acc));
      }
    }
    acc = quad_sum(acc);
    delta[r] = row < p.L ? acc - dl[r] : 0.f;
    if (row < p.L && t == 0) bp.delta[static_cast<int64_t>(bh) * p.L + row] = delta[r];
  }
  __syncthreads();  // the O tile's buffer is the loop's first request's

  const uint32_t qa = smem_addr(qs), da = smem_addr(dos);
  float dq[D / 8][4] = {};
  for (int visit = v0; visit < v1; ++visit) {
    const int buf = next_kv_visit<D, kThreads>(ks, vs, meta, k, v, p, ahead, visit, v0, v1, tid);
    const uint32_t kb = smem_addr(ks + buf * E), vb = smem_addr(vs + buf * E);

    const RowVisitMask vm = row_visit_mask(p, meta, b, buf);

    // S = Q K^T and dP = dO V^T: P is made while dP runs.
    float s[kTile / 8][4], dp[kTile / 8][4];
    score_products<T, D>(s, dp, qa, kb, da, vb);
    // P, then 0 where masked (after the exponential: a row with no key at
    // all has lse = -inf, and exp2(-inf + inf) would be NaN).
#pragma unroll
    for (int nb = 0; nb < kTile / 8; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nb][i] = exp2f(fmaf(s[nb][i], scale_log2, -lse2[i >> 1]));
    }
    if (vm.any()) mask_scores(s, vm, row_a, row_b, t, 0.f);
    wg::wait<0>();
    wg::fence_operand(dp);
    // dS = P * (dP - delta) into s, then dQ += dS K.
#pragma unroll
    for (int nb = 0; nb < kTile / 8; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nb][i] *= dp[nb][i] - delta[i >> 1];
    }
    uint32_t dsa[kTile / 16][4];
    pack_a<T>(dsa, s);
    wg::product<true, T>(dq, dsa, [&](int kk) { return wg::desc_kn<kTile>(kb, kk); });
    __syncthreads();  // the next visit's copy overwrites this buffer
  }
  cp_async_wait<0>();

  // Re-read here rather than held through the loop (as dK/dV's).
  const int32_t* item_end = work_item(lay.dq_work, lay, h);
  T* out = static_cast<T*>(bp.dq) + b * bp.dq_strides[0] + h * bp.dq_strides[1];
  const int slot = __ldcg(item_end + 3);
  if (slot >= 0) {  // a piece of a split row: its fp32 partial into a place of its own, every row
    const int64_t pieces0 = static_cast<int64_t>(bh) * lay.dq_work.n_pieces;
    float* part = bp.dq_part + (pieces0 + __ldcg(item_end + 4)) * kTile * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float* dst = part + (r ? row_b : row_a) * D;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        *reinterpret_cast<float2*>(dst + dn * 8 + 2 * t) =
            make_float2(dq[dn][2 * r] * p.scale, dq[dn][2 * r + 1] * p.scale);
      }
    }
    // The last piece to finish sums the pieces in order (the same sum on every run).
    const int2 pieces = split_pieces(lay.dq_work, lay, h, slot);
    if (last_piece(bp.dq_done + static_cast<int64_t>(bh) * lay.dq_work.n_split + slot, pieces.y)) {
      store_summed_rows<T, D, kThreads>(bp.dq_part + (pieces0 + pieces.x) * kTile * D, pieces.y, out,
                                        bp.dq_strides[2], qt, p.L);
    }
    return;
  }
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

// dK, dV: one CTA per (key tile or piece of a split column, batch * head),
// 16 keys per warp; the query tiles that visit this key tile come from the
// transposed layout. Per visit: S^T = K Q^T and dP^T = V dO^T (keys x
// queries, 64 x 64), then dV += P^T dO and dK += dS^T Q with P^T and dS^T as
// register A and the Q and dO tiles as B.
template <typename T, int D, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) sparse_attention_bwd_dkdv_kernel(const SparseAttentionBwdParams bp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int E = WgSmem<D>::kTileElems;
  const SparseAttentionParams& p = bp.fwd;
  T* ks = align_1024<T>(smem_raw);
  T* vs = ks + E;
  T* qs = vs + E;             // [kStages]
  T* dos = qs + kStages * E;  // [kStages]
  float* lse_s = reinterpret_cast<float*>(dos + kStages * E);  // [kStages][64], natural log, 0 past L
  float* delta_s = lse_s + kStages * kTile;                   // [kStages][64], 0 past L
  StageMeta* meta = reinterpret_cast<StageMeta*>(delta_s + kStages * kTile);

  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const SparseLayoutParams& lay = p.layout;
  const int32_t* item = work_item(lay.col_work, lay, h);
  const int kt = item[0], v0 = item[1], v1 = item[2];
  if (kt < 0) {  // this layout has fewer work items than the grid
    pdl::wait_for_previous_grid();  // a CTA of a chained grid waits before it exits (pdl.cuh)
    return;
  }
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
  const bool all_keys = keep == ~0ull;

  auto load = [&](T* tile, const T* src, int64_t stride, int tr) {
    load_tile_async<D, kThreads>(tile, src, stride, tr * kTile, p.L, tid);
  };
  // A visit's query tile (Q, dO, lse, delta) and visit data requested into
  // stage `buf` as one commit group, empty past the column's end (as
  // tile.cuh's request_kv; this walk's head below is next_kv_visit's, for
  // query tiles). lse and delta come by asynchronous copies too (v7; loaded
  // and stored by two warps before, which held the whole CTA at the barrier
  // for a global load's latency every visit). Rows past L get Q = dO = 0 and
  // lse = delta = 0, so P = 1 there multiplies zeros: no contribution.
  auto request_rows = [&](const VisitRef& r, bool any, int buf) {
    if (any) {
      load(qs + buf * E, q, p.q_strides[2], r.tile);
      load(dos + buf * E, dout, bp.do_strides[2], r.tile);
      if (tid < kTile) {
        const int row = r.tile * kTile + tid;
        const bool in = row < p.L;
        cp_async_word(lse_s + buf * kTile + tid, lse + (in ? row : 0), in);
        cp_async_word(delta_s + buf * kTile + tid, delta + (in ? row : 0), in);
      }
      request_meta(meta, lay.masks, r, buf, tid);
    }
    cp_async_commit();
  };
  load(ks, k, p.k_strides[2], kt);
  load(vs, v, p.v_strides[2], kt);
  // delta is the dQ kernel's: everything above may run during its last wave.
  pdl::wait_for_previous_grid();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {  // K and V ride with the first
    request_rows(s == 0 ? first_visit(item) : visit_ref(lay.rows, lay.col_mask, v0 + s, v1), v0 + s < v1, s);
  }
  VisitRef ahead = visit_ref(lay.rows, lay.col_mask, v0 + kStages - 1, v1);

  const uint32_t ka = smem_addr(ks), va = smem_addr(vs);
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  for (int visit = v0; visit < v1; ++visit) {
    const int n = visit - v0, buf = n % kStages, next = visit + kStages - 1;
    request_rows(ahead, next < v1, (n + kStages - 1) % kStages);
    ahead = visit_ref(lay.rows, lay.col_mask, next + 1, v1);
    cp_async_wait<kStages - 1>();
    wg::proxy_fence();
    __syncthreads();
    const uint32_t qb = smem_addr(qs + buf * E), db = smem_addr(dos + buf * E);
    const float* lse_b = lse_s + buf * kTile;
    const float* delta_b = delta_s + buf * kTile;
    const uint64_t* mask = meta->mask[buf] >= 0 ? meta->words[buf] : nullptr;

    float s[kTile / 8][4], dp[kTile / 8][4];
    score_products<T, D>(s, dp, ka, qb, va, db);
    // P^T into s (this thread's queries are c and c + 1 of each n8 tile),
    // then 0 where masked: partial visits and excluded keys only.
#pragma unroll
    for (int nb = 0; nb < kTile / 8; ++nb) {
      const float2 lse2 = *reinterpret_cast<const float2*>(lse_b + nb * 8 + 2 * t);
      const float nl[2] = {-(lse2.x * kLog2e), -(lse2.y * kLog2e)};
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nb][i] = exp2f(fmaf(s[nb][i], scale_log2, nl[i & 1]));
    }
    if (mask != nullptr || !all_keys) {
#pragma unroll
      for (int nb = 0; nb < kTile / 8; ++nb) {
        const int c = nb * 8 + 2 * t;
        const uint64_t mw0 = mask ? mask[c] : ~0ull, mw1 = mask ? mask[c + 1] : ~0ull;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = i >> 1;
          if (!key_ok[r] || !(((((i & 1) ? mw1 : mw0) >> (r ? key_b : key_a)) & 1ull))) s[nb][i] = 0.f;
        }
      }
    }
    wg::wait<0>();
    wg::fence_operand(dp);
    // dS^T = P^T * (dP^T - delta) into dp.
#pragma unroll
    for (int nb = 0; nb < kTile / 8; ++nb) {
      const float2 del2 = *reinterpret_cast<const float2*>(delta_b + nb * 8 + 2 * t);
#pragma unroll
      for (int i = 0; i < 4; ++i) dp[nb][i] = s[nb][i] * (dp[nb][i] - ((i & 1) ? del2.y : del2.x));
    }
    // dV += P^T dO and dK += dS^T Q, one group. (Issuing dV before dS was
    // made gained nothing, 0.254 -> 0.257 ms at 16K, and held P's
    // fragments through it.)
    uint32_t pa[kTile / 16][4], dsa[kTile / 16][4];
    pack_a<T>(pa, s);
    pack_a<T>(dsa, dp);
    wg::fence();
    wg::issue<true, T>(dv, pa, [&](int kk) { return wg::desc_kn<kTile>(db, kk); });
    wg::issue<true, T>(dk, dsa, [&](int kk) { return wg::desc_kn<kTile>(qb, kk); });
    wg::commit();
    wg::wait<0>();
    wg::fence_operand(dv);
    wg::fence_operand(dk);
    __syncthreads();  // the next visit's copy overwrites this buffer
  }
  cp_async_wait<0>();

  // Re-read here rather than held through the loop (registers are at the cap).
  const int32_t* item_end = work_item(lay.col_work, lay, h);
  const int slot = __ldcg(item_end + 3), kt_out = __ldcg(item_end);
  write_dkdv<T, D>(bp, dk, dv, bh, b, h, slot, kt_out, key_a, key_b, t);
  if (slot >= 0) {  // the last piece of a split column writes the summed partials out
    const int2 pieces = split_pieces(lay.col_work, lay, h, slot);
    if (last_piece(bp.col_done + static_cast<int64_t>(bh) * lay.col_work.n_split + slot, pieces.y)) {
      const float* acc = bp.dkv_acc + (static_cast<int64_t>(bh) * lay.col_work.n_split + slot) * 2 * kTile * D;
      store_summed_rows<T, D, kThreads>(acc, 1, static_cast<T*>(bp.dk) + b * bp.dk_strides[0] + h * bp.dk_strides[1],
                                        bp.dk_strides[2], kt_out, p.L);
      store_summed_rows<T, D, kThreads>(acc + kTile * D, 1,
                                        static_cast<T*>(bp.dv) + b * bp.dv_strides[0] + h * bp.dv_strides[1],
                                        bp.dv_strides[2], kt_out, p.L);
    }
  }
}

// CTAs per SM (the register cap): 3 at D = 64 (dQ 152 registers, dK/dV 168,
// no spill; dQ capped for 4 spilled 112 bytes and ran 0.188 -> 0.228 ms at
// 16K), 2 at D = 128 (190 and 248 at v10; 206 and 255 before).
template <int D>
constexpr int kDqBlocks = dq_ctas_per_sm(D);
template <int D>
constexpr int kDkdvBlocks = D == 64 ? 3 : 2;

template <typename T, int D>
void launch_bwd(const SparseAttentionBwdParams& p, cudaStream_t stream) {
  const int bh = p.fwd.B * p.fwd.H;

  // Q, dO, K[n], V[n] / K, V, Q[n], dO[n] and lse, delta [n][64]; the
  // stages' visit data. The dQ kernel writes delta for the dK/dV kernel.
  constexpr int dq_smem = WgSmem<D>::bytes(2 + 2 * kStages, sizeof(StageMeta));
  auto dq_kernel = sparse_attention_bwd_dq_kernel<T, D, kDqBlocks<D>>;
  cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dq_smem);
  dq_kernel<<<dim3(bh, p.fwd.layout.dq_work.n_items), kThreads, dq_smem, stream>>>(p);
  check_launch("sparse_attention_bwd_dq_kernel");

  constexpr int dkdv_smem =
      WgSmem<D>::bytes(2 + 2 * kStages, 2 * kStages * kTile * sizeof(float) + sizeof(StageMeta));
  auto dkdv_kernel = sparse_attention_bwd_dkdv_kernel<T, D, kDkdvBlocks<D>>;
  cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dkdv_smem);
  // Chained to the dQ kernel (v8, pdl.cuh): the dK/dV CTAs take the SMs the
  // dQ kernel's last wave leaves idle and run their prologue there; every
  // CTA waits for the dQ grid's end and memory before it reads delta.
  pdl::launch(dkdv_kernel, dim3(bh, p.fwd.layout.col_work.n_items), dim3(kThreads), dkdv_smem, stream, true, p);
  check_launch("sparse_attention_bwd_dkdv_kernel");
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
