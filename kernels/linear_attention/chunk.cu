// Chunked causal linear attention on tensor cores: the pass kernels of
// params.h (block_state, scan, chunk, the fused dφk/dv and dφq/dφk/dv
// backward kernels), the backward preparation and the recurrent step.
// Products on tensor cores as wgmma (wgmma.cuh: A from each warp's registers,
// B from swizzled shared memory, read once for the CTA's 4 warps), bf16 in,
// fp32 accumulate; 4 warps per CTA (one warpgroup), 16 rows of each 64-row
// sub-chunk per warp; tiles stream in through cp.async. Fragment layouts:
// kernels/sparse_attention/tile.cuh (mma.m16n8k16's, which wgmma's match).
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "kernels/linear_attention/params.h"
#include "kernels/pdl.cuh"
#include "kernels/sparse_attention/tile.cuh"
#include "kernels/wgmma.cuh"

namespace longtrain::kernels::linear_attention {
namespace {

using tile::cp_async_commit;
using tile::cp_async_wait;
using tile::ldmatrix_x4;
using tile::ldmatrix_x4_trans;
using tile::quad_sum;
using T = __nv_bfloat16;
using P = tile::Pack<T>;

constexpr int kThreads = 128;

// Tiles in shared memory, in params.h's swizzled layout: a sub-chunk's rows
// [64][D] (offsets swizzled_offset<kRows>) and a state [D][D]
// (swizzled_offset<D>), each on a 1024-byte boundary (every size here is a
// multiple of 1024 bytes).
template <int D>
struct Smem {
  static constexpr int kTileElems = kRows * D;
  static constexpr int kStateElems = D * D;
};
// The dynamic shared memory rounded up to 1024 bytes (hosts ask for kAlignSlack more).
constexpr size_t kAlignSlack = 1024;
__device__ __forceinline__ unsigned char* aligned_smem(unsigned char* smem) {
  return tile::align_1024<unsigned char>(smem);
}
// A barrier after which the products (async proxy) may read what any thread
// of the CTA wrote to shared memory, by cp.async or by plain stores.
__device__ __forceinline__ void sync_tiles() {
  wg::proxy_fence();
  __syncthreads();
}

// A fragment (16 x 16) of a row tile at (row0, col0).
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int col0, int lane) {
  ldmatrix_x4(a, tile + swizzled_offset<kRows>(row0 + (lane & 15), col0 + (lane >> 4) * 8));
}

// B operand descriptors for k16 step kk of a tile of kR rows: b_nk where the
// tile stores B transposed (row = n, column = k: K in Q Kᵀ), b_kn where it
// stores B as is (row = k, column = n: V in A V).
template <int kR>
__device__ __forceinline__ uint64_t b_nk(const T* tile, int kk) {
  return wg::desc_nk<kR>(tile::smem_addr(tile), kk);
}
template <int kR>
__device__ __forceinline__ uint64_t b_kn(const T* tile, int kk) {
  return wg::desc_kn<kR>(tile::smem_addr(tile), kk);
}

__device__ __forceinline__ int64_t row_of(int u, int L, bool reverse) { return reverse ? L - 1 - u : u; }

// A fragment (16 x 16) of Xᵀ at (m0, k0) where the tile stores X: row = k,
// column = m (Kᵀ in Kᵀ V).
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* tile, int m0, int k0, int lane) {
  ldmatrix_x4_trans(a, tile + swizzled_offset<kRows>(k0 + (lane & 7) + (lane >> 4) * 8, m0 + ((lane >> 3) & 1) * 8));
}

__device__ __forceinline__ uint32_t scale2(uint32_t x, float a, float b) {
  const float2 f = P::to(x);
  return P::from(f.x * a, f.y * b);
}

// Multiplies the k-columns (rows j of the stored tile) of an A fragment at k0
// by γ^(63 − j): the decay from row j to the end of its sub-chunk.
__device__ __forceinline__ void decay_k(uint32_t (&a)[4], int k0, int lane, float lg) {
  const int j = k0 + 2 * (lane & 3);
  const float w0 = exp2f(lg * (kRows - 1 - j)), w1 = exp2f(lg * (kRows - 2 - j));
  const float w8 = exp2f(lg * (kRows - 9 - j)), w9 = exp2f(lg * (kRows - 10 - j));
  a[0] = scale2(a[0], w0, w1);
  a[1] = scale2(a[1], w0, w1);
  a[2] = scale2(a[2], w8, w9);
  a[3] = scale2(a[3], w8, w9);
}

// Rows u0 + r_first .. u0 + r_first + kN − 1 (pass order) of one (batch,
// head) slice into rows r_first .. of a swizzled tile, by kBy threads (idx is
// the thread's index among them); rows at or beyond L, and below `pad`, are
// zero-filled. The whole tile by the CTA, or one warp's own 16 rows by its lanes.
template <int D, int kN = kRows, int kBy = kThreads>
__device__ __forceinline__ void load_rows_async(T* tile, const T* base, int64_t row_stride, int u0, int L,
                                                bool reverse, int idx, int r_first = 0, int pad = 0) {
  constexpr int kPerRow = D * sizeof(T) / 16;
  constexpr int kChunks = kN * kPerRow;
  static_assert(kChunks % kBy == 0, "tile copy must split evenly over the threads");
#pragma unroll
  for (int i = 0; i < kChunks / kBy; ++i) {
    const int c = idx + i * kBy;
    const int r = r_first + c / kPerRow, col = (c % kPerRow) * 8;
    const int u = u0 + r;
    const bool in = u < L && u >= pad;
    const T* g = base + (in ? row_of(u, L, reverse) * row_stride + col : 0);
    const uint32_t dst = tile::smem_addr(tile + swizzled_offset<kRows>(r, col));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(g), "r"(in ? 16 : 0));
  }
}

__device__ __forceinline__ const T* slice(const Operand& x, int b, int h) {
  return static_cast<const T*>(x.ptr) + b * x.strides[0] + h * x.strides[1];
}

// Per-row scalars of rows u0 .. u0 + 63 into shared memory (0 past L).
__device__ __forceinline__ void load_scalars(float* dst, const float* src, int64_t bh, int u0, int L, bool reverse,
                                             int tid) {
  if (src && tid < kRows) {
    const int u = u0 + tid;
    dst[tid] = u < L ? src[bh * L + row_of(u, L, reverse)] : 0.f;
  }
}

// Column sums Σ_j γ^(63−j) x_j[col] of one sub-chunk (K, V tiles): of k, of
// v, and of e_j·v (e_col may be null). Serial over the 64 rows, for one column
// per thread: block_state's vectors and the chunk loop's advance_vectors.
template <int D>
__device__ __forceinline__ void column_sums(float& sk, float& sv, float& se, const T* K, const T* V,
                                            const float* e_col, float lg, bool decay, int col) {
  sk = sv = se = 0.f;
#pragma unroll 8
  for (int j = 0; j < kRows; ++j) {
    const float w = decay ? exp2f(lg * (kRows - 1 - j)) : 1.f;
    const float vv = __bfloat162float(V[swizzled_offset<kRows>(j, col)]);
    sk += w * __bfloat162float(K[swizzled_offset<kRows>(j, col)]);
    sv += w * vv;
    if (e_col) se += w * e_col[j] * vv;
  }
}

// Row j of a sub-chunk tile times γ^(63 − j), in place (16 bytes per step).
template <int D>
__device__ __forceinline__ void decay_rows(T* tile, float lg, int tid) {
  constexpr int kPerRow = D / 8;
#pragma unroll
  for (int c = tid; c < kRows * kPerRow; c += kThreads) {
    const int r = c / kPerRow;
    const float w = exp2f(lg * (kRows - 1 - r));
    uint4* x = reinterpret_cast<uint4*>(tile + swizzled_offset<kRows>(r, (c % kPerRow) * 8));
    uint4 y = *x;
    y.x = scale2(y.x, w, w);
    y.y = scale2(y.y, w, w);
    y.z = scale2(y.z, w, w);
    y.w = scale2(y.w, w, w);
    *x = y;
  }
}

// acc += Kᵀ V for m-block mt of the [D, D] product (rows 64 mt .. 64 mt + 63;
// this warp's accumulators hold rows 64 mt + 16 warp ..), each key row j
// weighted by γ^(63 − j) if decay. Without decay Kᵀ is read by the tensor
// cores straight from the K tile (M-major A); with it, its A fragments come
// through ldmatrix.trans and are scaled in registers.
template <int D>
__device__ __forceinline__ void add_kt_v(float (&acc)[D / 8][4], const T* K, const T* V, int mt, bool decay,
                                         float lg, int warp, int lane) {
  auto b_desc = [&](int kk) { return b_kn<kRows>(V, kk); };
  if (!decay) {
    const uint32_t k_base = tile::smem_addr(K) + mt * (kRows * 128);
    wg::product_ss<true, true, kRows / 16>(
        acc, [&](int kk) { return wg::desc(k_base + kk * 16 * 128, kRows * 128); }, b_desc);
    return;
  }
  uint32_t a[kRows / 16][4];
#pragma unroll
  for (int kk = 0; kk < kRows / 16; ++kk) {
    load_a_trans(a[kk], K, (warp + 4 * mt) * 16, kk * 16, lane);
    decay_k(a[kk], kk * 16, lane, lg);
  }
  wg::product<true>(acc, a, b_desc);
}

// ---------------------------------------------------------------------------
// 1. block_state: ΔS of block `blk` (fp32, [D, D]) and its vectors, into slot
//    blk + 1 of the workspaces (the scan turns slots into prefixes); with
//    p.mirror, of block blk + 1 into slot n_blocks − blk − 1 (params.h).
// kDecay: p.log2_decay is set (a template argument, so that the no-decay
// kernel holds no registers for the decayed path). D = 64: 80 registers and
// 33 KB, 6 CTAs per SM, so that the chunk kernel's blocks (sized to its 3 per
// SM) fill whole waves here too (H100 64K: 217 -> 210 µs for the two
// launches; 118 registers uncapped).
template <int D, bool kDecay>
__global__ void __launch_bounds__(kThreads, D == 64 ? 6 : 1) block_state_kernel(PassParams p) {
  constexpr int kTileElems = Smem<D>::kTileElems;
  constexpr int kMt = D / 64;  // m-tiles (16 rows of S) per warp
  constexpr int kNt = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(aligned_smem(smem_raw));
  T* Vs = Ks + 2 * kTileElems;
  float* es = reinterpret_cast<float*>(Vs + 2 * kTileElems);  // [2][64]

  pdl::let_next_grid_launch();  // the first kernel of its chain: the scan may take SMs as CTAs here finish
  const int bh = blockIdx.x, blk = blockIdx.y + p.mirror, b = bh / p.H, h = bh % p.H;  // heads first
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float lg = kDecay ? p.log2_decay[h] : 0.f;
  const float g_sub = exp2f(lg * kRows);
  const T* kb = slice(p.k, b, h);
  const T* vb = slice(p.v, b, h);
  const int u_begin = blk * p.block_chunks * kRows;

  float acc[kMt][kNt][4];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
  float zk = 0.f, zv = 0.f, ze = 0.f;  // column tid

  auto prefetch = [&](int i, int buf) {
    const int u0 = u_begin + i * kRows;
    load_rows_async<D>(Ks + buf * kTileElems, kb, p.k.strides[2], u0, p.L, p.reverse, tid);
    load_rows_async<D>(Vs + buf * kTileElems, vb, p.v.strides[2], u0, p.L, p.reverse, tid);
    cp_async_commit();
    load_scalars(es + buf * kRows, p.e, bh, u0, p.L, p.reverse, tid);
  };
  prefetch(0, 0);
  for (int i = 0; i < p.block_chunks; ++i) {
    const int buf = i & 1;
    if (i + 1 < p.block_chunks) {
      prefetch(i + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    sync_tiles();
    const T* K = Ks + buf * kTileElems;
    T* V = Vs + buf * kTileElems;
    if (kDecay && i > 0) {
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= g_sub;
      zk *= g_sub;
      zv *= g_sub;
      ze *= g_sub;
    }
    if (tid < D && (p.zk || p.zv || p.ze)) {
      float sk, sv, se;
      column_sums<D>(sk, sv, se, K, V, p.e ? es + buf * kRows : nullptr, lg, kDecay, tid);
      zk += sk;
      zv += sv;
      ze += se;
    }
    if (kDecay) {  // V's rows weighted in place, so that Kᵀ V reads both tiles as they are
      __syncthreads();  // the column sums are done with V
      decay_rows<D>(V, lg, tid);
      sync_tiles();
    }
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) add_kt_v<D>(acc[mt], K, V, mt, false, 0.f, warp, lane);
    __syncthreads();  // the next prefetch refills this buffer
  }

  const int64_t slot = static_cast<int64_t>(bh) * (p.n_blocks + 1) + (p.mirror ? p.n_blocks - blk : blk + 1);
  float* S = p.states + slot * D * D;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    const int r = (warp + 4 * mt) * 16 + g;
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      const int c = nt * 8 + 2 * t;
      *reinterpret_cast<float2*>(S + r * D + c) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
      *reinterpret_cast<float2*>(S + (r + 8) * D + c) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
    }
  }
  if (tid < D) {
    if (p.zk) p.zk[slot * D + tid] = zk;
    if (p.zv) p.zv[slot * D + tid] = zv;
    if (p.ze) p.ze[slot * D + tid] = ze;
  }
}

// ---------------------------------------------------------------------------
// 2. scan: slot b ← γ^(rows per block) · slot (b − 1) + slot b for slots
//    1 .. last of n_slots per head, slot 0 ← 0. A CTA takes 32 elements of
//    the slots; its 8 warps each take one of 8 runs of consecutive slots,
//    sum their run (all its loads in flight), meet the earlier runs' sums
//    through shared memory, and write their prefixes: one round trip to
//    memory where a thread per element walking all slots 8 at a time paid
//    7 at 64K's 49 blocks. (Chained, its time is not measured apart; across
//    H100 instances v8 with it was no faster than with 32 loads in flight per
//    thread, which took 8.0 µs per scan against 6.9 at 8: NOTES.md, v8.)
constexpr int kScanRuns = 8, kScanBatch = 8;
__global__ void __launch_bounds__(32 * kScanRuns) scan_kernel(float* buf, int64_t slot_elems, int n_slots, int last,
                                                            const float* log2_decay, int H, float rows_per_block) {
  pdl::wait_for_previous_grid();  // block_state's sums (or the previous scan's: chained launches)
  pdl::let_next_grid_launch();
  __shared__ float run_sum[kScanRuns][32];
  const int bh = blockIdx.y, run = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  const bool live = idx < slot_elems;
  const float lg = log2_decay ? log2_decay[bh % H] * rows_per_block : 0.f;
  const float g = exp2f(lg);
  float* x = buf + static_cast<int64_t>(bh) * n_slots * slot_elems + idx;
  const int per = (last + kScanRuns - 1) / kScanRuns;
  const int b_begin = 1 + run * per, b_end = min(last, (run + 1) * per);  // this run's slots, inclusive
  const bool in_registers = per <= kScanBatch;
  float in[kScanBatch];
  float s = 0.f;  // the run's own sum, decayed to its last slot
  for (int b0 = b_begin; b0 <= b_end; b0 += kScanBatch) {
#pragma unroll
    for (int j = 0; j < kScanBatch; ++j) in[j] = live && b0 + j <= b_end ? x[(b0 + j) * slot_elems] : 0.f;
#pragma unroll
    for (int j = 0; j < kScanBatch; ++j)
      if (b0 + j <= b_end) s = g * s + in[j];
  }
  run_sum[run][lane] = s;
  __syncthreads();
  if (!live) return;
  if (run == 0) x[0] = 0.f;
  // The prefix before this run: the earlier runs, each decayed over the runs
  // after it. Where this run holds a slot, every earlier run is whole (per slots).
  const float g_run = exp2f(lg * per);
  s = 0.f;
  for (int r = 0; r < run; ++r) s = g_run * s + run_sum[r][lane];
  for (int b0 = b_begin; b0 <= b_end; b0 += kScanBatch) {
    if (!in_registers) {
#pragma unroll
      for (int j = 0; j < kScanBatch; ++j) in[j] = b0 + j <= b_end ? x[(b0 + j) * slot_elems] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kScanBatch; ++j) {
      if (b0 + j <= b_end) {
        s = g * s + in[j];
        x[(b0 + j) * slot_elems] = s;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// 3. chunk: the outputs of one block, sub-chunk by sub-chunk. The steps are
//    device functions shared with the fused dφk/dv kernel below; every warp
//    works on its own 16 rows (r0 = 16·warp + g and r1 = r0 + 8 for a thread).

// acc ← 0: this warp's 16 rows of an accumulator of D columns.
template <int D>
__device__ __forceinline__ void zero_rows(float (&oacc)[D / 8][4]) {
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[nt][e] = 0.f;
}

// sacc = X_w Yᵀ: [16, 64] logits of this warp's rows of X against all 64 rows of Y.
template <int D>
__device__ __forceinline__ void logits(float (&sacc)[8][4], const T* X, const T* Y, int warp, int lane) {
  zero_rows<kRows>(sacc);
  uint32_t a[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a(a[kk], X, warp * 16, kk * 16, lane);
  wg::product<false>(sacc, a, [&](int kk) { return b_nk<kRows>(Y, kk); });
}

// Packed bf16 pairs of a [16, 64] weight block (per 8-column group, rows r0
// and r1) as the A fragments of its four 16-column k-steps.
__device__ __forceinline__ void to_a_fragments(const uint32_t (&packed)[8][2], uint32_t (&pa)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    pa[kk][0] = packed[2 * kk][0];
    pa[kk][1] = packed[2 * kk][1];
    pa[kk][2] = packed[2 * kk + 1][0];
    pa[kk][3] = packed[2 * kk + 1][1];
  }
}

// Adds the row / column scalars, decays by γ^(r−s), masks s > r and rows
// past L, rounds to bf16 (the values A V will see), and packs A fragments.
// Returns the row sums of the rounded weights in den0 / den1 (quad-partial):
// a row's weights then sum to exactly its denominator, so o is an exact
// weighted mean of v, which the backward's g·v + h = g·(v − o) relies on.
// Lean on purpose (the chunk loop issues far more of these instructions than
// MMAs): the scalars and the decay in uniform branches, one compare per
// weight against the row's last visible column, and each pair rounded once,
// by the packing, then read back for the sums.
__device__ __forceinline__ void weights(float (&sacc)[8][4], uint32_t (&pa)[4][4], float c0, float c1,
                                        const float* e_col, float lg, bool decay, int u0, int L, int r0, int r1,
                                        int t, float& den0, float& den1) {
  if (c0 != 0.f || c1 != 0.f) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      sacc[nt][0] += c0;
      sacc[nt][1] += c0;
      sacc[nt][2] += c1;
      sacc[nt][3] += c1;
    }
  }
  if (e_col) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const float2 e = *reinterpret_cast<const float2*>(e_col + nt * 8 + 2 * t);
      sacc[nt][0] += e.x;
      sacc[nt][1] += e.y;
      sacc[nt][2] += e.x;
      sacc[nt][3] += e.y;
    }
  }
  if (decay) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) sacc[nt][e] *= exp2f(lg * ((e < 2 ? r0 : r1) - (nt * 8 + 2 * t + (e & 1))));
  }
  // Column s is kept for row r when s <= r and u0 + s < L.
  const int last = L - 1 - u0;
  const int lim0 = min(r0, last) - 2 * t, lim1 = min(r1, last) - 2 * t;
  uint32_t packed[8][2];
  den0 = den1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int s = nt * 8;  // + 2t + (e & 1), folded into lim
    packed[nt][0] = P::from(s <= lim0 ? sacc[nt][0] : 0.f, s + 1 <= lim0 ? sacc[nt][1] : 0.f);
    packed[nt][1] = P::from(s <= lim1 ? sacc[nt][2] : 0.f, s + 1 <= lim1 ? sacc[nt][3] : 0.f);
    const float2 w0 = P::to(packed[nt][0]), w1 = P::to(packed[nt][1]);
    den0 += w0.x + w0.y;
    den1 += w1.x + w1.y;
  }
  to_a_fragments(packed, pa);
}

// oacc += X_w S (kTransposed: X_w Sᵀ) with S's bf16 part `Shi` [D][D];
// optionally the partial dots of X's rows with zk (quad-partial). The state
// is carried in fp32 (hi + lo, advance_state), but the product takes hi
// alone, as flash-linear-attention's does: with hi + lo (twice the MMAs) the
// tests' worst error stayed the same (dv, 0.78 of the 2× bound) and the rest
// moved by ≤ 0.12 of it, and the dφk/dv pass took 8% longer.
template <int D, bool kTransposed>
__device__ __forceinline__ void times_state(float (&oacc)[D / 8][4], const T* X, const T* Shi, const float* zk,
                                            int warp, int lane, float& xz0, float& xz1) {
  const int t = lane & 3;
  uint32_t a[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    load_a(a[kk], X, warp * 16, kk * 16, lane);
    if (zk) {
      const int f = kk * 16 + 2 * t;
      const float2 q0 = P::to(a[kk][0]), q1 = P::to(a[kk][1]), q2 = P::to(a[kk][2]), q3 = P::to(a[kk][3]);
      xz0 += q0.x * zk[f] + q0.y * zk[f + 1] + q2.x * zk[f + 8] + q2.y * zk[f + 9];
      xz1 += q1.x * zk[f] + q1.y * zk[f + 1] + q3.x * zk[f + 8] + q3.y * zk[f + 9];
    }
  }
  if (kTransposed) wg::product<false>(oacc, a, [&](int kk) { return b_nk<D>(Shi, kk); });
  else wg::product<true>(oacc, a, [&](int kk) { return b_kn<D>(Shi, kk); });
}

// oacc += A V for this warp's 16 rows (A as packed fragments over 64 keys).
template <int D>
__device__ __forceinline__ void times_values(float (&oacc)[D / 8][4], const uint32_t (&pa)[4][4], const T* V,
                                             int lane) {
  wg::product<true>(oacc, pa, [&](int kk) { return b_kn<kRows>(V, kk); });
}

// Writes this warp's 16 output rows: rounded into its own rows of `stage` (a
// tile no other warp reads any more), then 16-byte stores.
template <int D>
__device__ __forceinline__ void store_rows(const float (&oacc)[D / 8][4], T* stage, T* ob, int64_t row_stride,
                                           int u0, int L, bool reverse, int warp, int lane, int pad = 0) {
  const int g = lane >> 2, t = lane & 3, r0 = warp * 16 + g, r1 = r0 + 8;
  __syncwarp();
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int d = nt * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(stage + swizzled_offset<kRows>(r0, d)) = P::from(oacc[nt][0], oacc[nt][1]);
    *reinterpret_cast<uint32_t*>(stage + swizzled_offset<kRows>(r1, d)) = P::from(oacc[nt][2], oacc[nt][3]);
  }
  __syncwarp();
  constexpr int kPerRow = D / 8;
#pragma unroll
  for (int c = lane; c < 16 * kPerRow; c += 32) {
    const int r = warp * 16 + c / kPerRow, col = (c % kPerRow) * 8;
    if (u0 + r < L && u0 + r >= pad) {
      *reinterpret_cast<uint4*>(ob + row_of(u0 + r, L, reverse) * row_stride + col) =
          *reinterpret_cast<const uint4*>(stage + swizzled_offset<kRows>(r, col));
    }
  }
}

// The low halves of a carried state (hi + lo): thread-private, in the order
// of advance_state's accumulator fragments, so that a thread moves them 16
// bytes at a time (4 + 4 accesses per update at D = 64 instead of 16 + 16 in
// the hi tile's layout). Chunk q of m-tile mt holds the bf16 pairs of
// (nt, half) = (2q, 0), (2q, 1), (2q + 1, 0), (2q + 1, 1); consecutive threads'
// chunks are adjacent (no bank conflicts).
template <int D>
__device__ __forceinline__ uint4* lo_chunk(T* Slo, int mt, int q, int tid) {
  return reinterpret_cast<uint4*>(Slo) + (mt * (D / 16) + q) * kThreads + tid;
}

// S ← γ^64 S + Σ_j γ^(63−j) k_j v_jᵀ over one sub-chunk (K, V tiles), S held
// as hi + lo in shared memory (hi in the swizzled tile the products read, lo
// as lo_chunk); warp w owns rows 16 w (and 16 (w + 4)).
// sign = −1: S ← S − Σ_j k_j v_jᵀ (no decay; the fused backward's walk).
// Callers synchronise before (every warp done reading S) and after.
template <int D>
__device__ __forceinline__ void advance_state(T* Shi, T* Slo, const T* K, const T* V, float g_sub, float lg,
                                              bool decay, int warp, int lane, float sign = 1.f) {
  constexpr int kNt = D / 8;
  const int g = lane >> 2, t = lane & 3, tid = warp * 32 + lane;
#pragma unroll
  for (int mt = 0; mt < D / 64; ++mt) {
    const int m0 = (warp + 4 * mt) * 16;
    float acc[kNt][4];
    uint4 lo4[kNt / 2];
#pragma unroll
    for (int q = 0; q < kNt / 2; ++q) lo4[q] = *lo_chunk<D>(Slo, mt, q, tid);
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      const int d = nt * 8 + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float2 hi = P::to(*reinterpret_cast<const uint32_t*>(Shi + swizzled_offset<D>(m0 + g + 8 * half, d)));
        const float2 lo = P::to(reinterpret_cast<const uint32_t*>(&lo4[nt / 2])[(nt % 2) * 2 + half]);
        acc[nt][2 * half] = sign * g_sub * (hi.x + lo.x);
        acc[nt][2 * half + 1] = sign * g_sub * (hi.y + lo.y);
      }
    }
    add_kt_v<D>(acc, K, V, mt, decay, lg, warp, lane);
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      const int d = nt * 8 + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float x0 = sign * acc[nt][2 * half], x1 = sign * acc[nt][2 * half + 1];
        const uint32_t hi = P::from(x0, x1);
        const float2 hf = P::to(hi);
        *reinterpret_cast<uint32_t*>(Shi + swizzled_offset<D>(m0 + g + 8 * half, d)) = hi;
        reinterpret_cast<uint32_t*>(&lo4[nt / 2])[(nt % 2) * 2 + half] = P::from(x0 - hf.x, x1 - hf.y);
      }
    }
#pragma unroll
    for (int q = 0; q < kNt / 2; ++q) *lo_chunk<D>(Slo, mt, q, tid) = lo4[q];
  }
}

// Column sums Σ_j γ^(63−j) x_j[col] (and with e_j) of one sub-chunk: thread
// tid < D advances the carried vectors of column tid. Null vectors are not
// carried, and with none nothing runs: the loop is serial per thread and sits
// between two barriers of the chunk loop (running it for nothing cost the
// no-normaliser passes 12–15% at 16K and 64K on the H100).
template <int D>
__device__ __forceinline__ void advance_vectors(float* zk, float* zv, float* ze, const T* K, const T* V,
                                                const float* e_col, float g_sub, float lg, bool decay, int tid) {
  if (tid >= D || (!zk && !zv && !ze)) return;
  float sk, sv, se;
  column_sums<D>(sk, sv, se, K, V, e_col, lg, decay, tid);
  if (zk) zk[tid] = g_sub * zk[tid] + sk;
  if (zv) zv[tid] = g_sub * zv[tid] + sv;
  if (ze) ze[tid] = g_sub * ze[tid] + se;
}

// A [D, D] fp32 state (or its transpose) into shared memory as hi + lo
// (advance_state's layouts: each thread writes the lo of its own fragments).
template <int D>
__device__ __forceinline__ void load_matrix(T* Shi, T* Slo, const float* S, bool transposed, int tid) {
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < D / 64; ++mt) {
#pragma unroll
    for (int q = 0; q < D / 16; ++q) {
      uint32_t lo[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = (warp + 4 * mt) * 16 + g + 8 * (j % 2), c = (2 * q + j / 2) * 8 + 2 * t;
        const float2 s = transposed ? make_float2(S[c * D + r], S[(c + 1) * D + r])
                                    : *reinterpret_cast<const float2*>(S + r * D + c);
        const uint32_t hi = P::from(s.x, s.y);
        const float2 hf = P::to(hi);
        *reinterpret_cast<uint32_t*>(Shi + swizzled_offset<D>(r, c)) = hi;
        lo[j] = P::from(s.x - hf.x, s.y - hf.y);
      }
      *lo_chunk<D>(Slo, mt, q, tid) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    }
  }
}

// The carried state of block `slot` into shared memory as hi + lo (slot 0
// holds zeros), and its vectors.
template <int D>
__device__ __forceinline__ void load_state(T* Shi, T* Slo, float* zk_s, float* zv_s, float* ze_s, const PassParams& p,
                                           int64_t slot, int tid) {
  load_matrix<D>(Shi, Slo, p.states + slot * D * D, p.states_transposed, tid);
  if (tid < D) {
    zk_s[tid] = p.zk ? p.zk[slot * D + tid] : 0.f;
    zv_s[tid] = p.zv ? p.zv[slot * D + tid] : 0.f;
    ze_s[tid] = p.ze ? p.ze[slot * D + tid] : 0.f;
  }
}

// Scales rows r0 / r1 of an accumulator by w0 / w1 and adds a0·z0 + b per column.
template <int D>
__device__ __forceinline__ void finish_inter(float (&oacc)[D / 8][4], float w0, float w1, float c0, float c1,
                                             const float* zv, const float* ze, int t) {
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int d = nt * 8 + 2 * t;
    const float zv0 = zv ? zv[d] : 0.f, zv1 = zv ? zv[d + 1] : 0.f;
    const float ze0 = ze ? ze[d] : 0.f, ze1 = ze ? ze[d + 1] : 0.f;
    oacc[nt][0] = w0 * (oacc[nt][0] + c0 * zv0 + ze0);
    oacc[nt][1] = w0 * (oacc[nt][1] + c0 * zv1 + ze1);
    oacc[nt][2] = w1 * (oacc[nt][2] + c1 * zv0 + ze0);
    oacc[nt][3] = w1 * (oacc[nt][3] + c1 * zv1 + ze1);
  }
}

template <int D>
struct ChunkSmem {
  static constexpr int kTileElems = Smem<D>::kTileElems;
  static constexpr int kStateElems = Smem<D>::kStateElems;
  // n_tiles double-buffered tiles, S as hi + lo, three vectors, two scalar rows x 2.
  static constexpr size_t bytes(int n_tiles) {
    return (2 * n_tiles * kTileElems + 2 * kStateElems) * sizeof(T) + (3 * D + 4 * kRows) * sizeof(float) +
           kAlignSlack;
  }
};

template <int D>
__global__ void __launch_bounds__(kThreads) chunk_kernel(PassParams p) {
  using Layout = ChunkSmem<D>;
  constexpr int kNt = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(aligned_smem(smem_raw));
  T* Ks = Qs + 2 * Layout::kTileElems;
  T* Vs = Ks + 2 * Layout::kTileElems;
  T* Shi = Vs + 2 * Layout::kTileElems;  // [D][D]: S ≈ hi + lo
  T* Slo = Shi + Layout::kStateElems;
  float* zk_s = reinterpret_cast<float*>(Slo + Layout::kStateElems);
  float* zv_s = zk_s + D;
  float* ze_s = zv_s + D;
  float* cs = ze_s + D;        // [2][64]
  float* es = cs + 2 * kRows;  // [2][64]

  const int bh = blockIdx.x, blk = blockIdx.y, b = bh / p.H, h = bh % p.H;  // launch order: heads first
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const bool decay = p.log2_decay != nullptr;
  const float lg = decay ? p.log2_decay[h] : 0.f;
  const float g_sub = exp2f(lg * kRows);
  const T* qb = slice(p.q, b, h);
  const T* kb = slice(p.k, b, h);
  const T* vb = slice(p.v, b, h);
  T* ob = static_cast<T*>(p.out) + b * p.out_strides[0] + h * p.out_strides[1];
  const int u_begin = blk * p.block_chunks * kRows;
  const int n_sub = min(p.block_chunks, (p.L - u_begin + kRows - 1) / kRows);

  auto prefetch = [&](int i, int buf) {
    const int u0 = u_begin + i * kRows;
    load_rows_async<D>(Qs + buf * Layout::kTileElems, qb, p.q.strides[2], u0, p.L, p.reverse, tid);
    load_rows_async<D>(Ks + buf * Layout::kTileElems, kb, p.k.strides[2], u0, p.L, p.reverse, tid);
    load_rows_async<D>(Vs + buf * Layout::kTileElems, vb, p.v.strides[2], u0, p.L, p.reverse, tid);
    cp_async_commit();
    load_scalars(cs + buf * kRows, p.c, bh, u0, p.L, p.reverse, tid);
    load_scalars(es + buf * kRows, p.e, bh, u0, p.L, p.reverse, tid);
  };
  prefetch(0, 0);  // the pass's inputs, complete before its chain began (pdl.cuh)
  if (n_sub <= 0) pdl::wait_for_previous_grid();  // a CTA of a chained grid waits before it exits (pdl.cuh)

  for (int i = 0; i < n_sub; ++i) {
    const int buf = i & 1;
    if (i + 1 < n_sub) {
      prefetch(i + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    sync_tiles();
    T* Q = Qs + buf * Layout::kTileElems;
    const T* K = Ks + buf * Layout::kTileElems;
    const T* V = Vs + buf * Layout::kTileElems;
    const float* c_row = cs + buf * kRows;
    const float* e_col = p.e ? es + buf * kRows : nullptr;
    const int u0 = u_begin + i * kRows;
    const int r0 = warp * 16 + g, r1 = r0 + 8;

    // Intra-chunk weights A = Q Kᵀ (+ c_t + e_s), decayed and masked.
    float sacc[8][4];
    uint32_t pa[4][4];
    float den0, den1;
    const float c0 = p.c ? c_row[r0] : 0.f, c1 = p.c ? c_row[r1] : 0.f;
    logits<D>(sacc, Q, K, warp, lane);
    weights(sacc, pa, c0, c1, e_col, lg, decay, u0, p.L, r0, r1, t, den0, den1);
    if (i == 0) {  // the first weights came before the scan's prefixes (pdl.cuh)
      pdl::wait_for_previous_grid();
      load_state<D>(Shi, Slo, zk_s, zv_s, ze_s, p, static_cast<int64_t>(bh) * (p.n_blocks + 1) + blk, tid);
      sync_tiles();
    }

    // Inter-chunk: γ^(r+1) (q_r S + c_r zv + ze), and γ^(r+1) q_r·zk for the denominator.
    float oacc[kNt][4];
    zero_rows<D>(oacc);
    float qz0 = 0.f, qz1 = 0.f;
    if (u0 > 0) {
      times_state<D, false>(oacc, Q, Shi, p.normalize ? zk_s : nullptr, warp, lane, qz0, qz1);
      const float w0 = exp2f(lg * (r0 + 1)), w1 = exp2f(lg * (r1 + 1));
      finish_inter<D>(oacc, w0, w1, c0, c1, p.c ? zv_s : nullptr, p.e ? ze_s : nullptr, t);
      qz0 = w0 * quad_sum(qz0);
      qz1 = w1 * quad_sum(qz1);
    }
    times_values<D>(oacc, pa, V, lane);
    if (p.normalize) {
      const float rd0 = 1.f / (quad_sum(den0) + qz0 + p.eps);
      const float rd1 = 1.f / (quad_sum(den1) + qz1 + p.eps);
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
        oacc[nt][0] *= rd0;
        oacc[nt][1] *= rd0;
        oacc[nt][2] *= rd1;
        oacc[nt][3] *= rd1;
      }
      if (t == 0 && p.rden) {
        const int64_t base = static_cast<int64_t>(bh) * p.L;
        if (u0 + r0 < p.L) p.rden[base + row_of(u0 + r0, p.L, p.reverse)] = rd0;
        if (u0 + r1 < p.L) p.rden[base + row_of(u0 + r1, p.L, p.reverse)] = rd1;
      }
    }
    store_rows<D>(oacc, Q, ob, p.out_strides[2], u0, p.L, p.reverse, warp, lane);

    if (i + 1 < n_sub) {
      sync_tiles();  // every warp is done reading S and the vectors
      advance_state<D>(Shi, Slo, K, V, g_sub, lg, decay, warp, lane);
      advance_vectors<D>(p.normalize ? zk_s : nullptr, p.c ? zv_s : nullptr, p.e ? ze_s : nullptr, K, V, e_col, g_sub,
                         lg, decay, tid);
    }
    sync_tiles();  // the next prefetch refills this sub-chunk's buffers
  }
}

// The backward passes' rows of one (batch, head): V, G, φq, φk in (the
// pass's q, k, v, q2), dφk and dv out.
struct BackwardRows {
  const T *v, *g, *q, *k;
  T *dk, *dv;
  __device__ BackwardRows(const PassParams& p, int b, int h)
      : v(slice(p.q, b, h)), g(slice(p.k, b, h)), q(slice(p.v, b, h)), k(slice(p.q2, b, h)),
        dk(static_cast<T*>(p.out) + b * p.out_strides[0] + h * p.out_strides[1]),
        dv(static_cast<T*>(p.out2) + b * p.out2_strides[0] + h * p.out2_strides[1]) {}
};

// ---------------------------------------------------------------------------
// 4. The fused reverse pass of the backward: dφk and dv of one block.
//    In pass order (rows reversed), with the carried R = Σ γ^(·) g_t φq_tᵀ
//    and re = Σ γ^(·) h_t φq_t over the later rows:
//      dφk_s = Σ_t w (v_s·g_t + h_t) φq_t + γ^(r+1) (v_s R + re)     (q=V, k=G, v=Q, e=h)
//      dv_s  = Σ_t w (φk_s·φq_t) g_t      + γ^(r+1) φk_s Rᵀ           (q=K, k=Q, v=G)
//    The two passes share R (one is the other's transpose), so V, G, Q, K
//    are read once. p describes the dφk pass; p.q2 / p.out2 are φk and dv.
//    V and K are the products' row operands: a warp reads only its own 16
//    rows of them (and stages its output rows there), so each is one tile,
//    refilled warp by warp as soon as that warp's output has gone out through
//    it; G and Q, which every warp reads whole, are double-buffered. That is
//    the chunk kernel's 66.8 KB of shared memory instead of 83 KB: 3 CTAs per
//    SM instead of 2 (D = 64, with registers capped to fit).
template <int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 3 : 1) dkdv_kernel(PassParams p) {
  using Layout = ChunkSmem<D>;
  constexpr int kNt = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Gs = reinterpret_cast<T*>(aligned_smem(smem_raw));  // [2] tiles
  T* Qs = Gs + 2 * Layout::kTileElems;  // [2]
  T* V = Qs + 2 * Layout::kTileElems;   // rows of the dφk output (its q), one tile
  T* K = V + Layout::kTileElems;        // rows of the dv output, one tile
  T* Shi = K + Layout::kTileElems;
  T* Slo = Shi + Layout::kStateElems;
  float* zk_s = reinterpret_cast<float*>(Slo + Layout::kStateElems);  // unused (no normaliser)
  float* zv_s = zk_s + D;                                             // unused (no row scalar)
  float* ze_s = zv_s + D;
  float* es = ze_s + D + 2 * kRows;  // [2][64]

  const int bh = blockIdx.x, blk = blockIdx.y, b = bh / p.H, h = bh % p.H;  // launch order: heads first
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const bool decay = p.log2_decay != nullptr;
  const float lg = decay ? p.log2_decay[h] : 0.f;
  const float g_sub = exp2f(lg * kRows);
  const BackwardRows io(p, b, h);
  const int u_begin = blk * p.block_chunks * kRows;
  const int n_sub = min(p.block_chunks, (p.L - u_begin + kRows - 1) / kRows);

  auto prefetch_shared = [&](int i, int buf) {
    const int u0 = u_begin + i * kRows;
    load_rows_async<D>(Gs + buf * Layout::kTileElems, io.g, p.k.strides[2], u0, p.L, p.reverse, tid);
    load_rows_async<D>(Qs + buf * Layout::kTileElems, io.q, p.v.strides[2], u0, p.L, p.reverse, tid);
    cp_async_commit();
    load_scalars(es + buf * kRows, p.e, bh, u0, p.L, p.reverse, tid);
  };
  // This warp's 16 rows of V or K for sub-chunk i (after __syncwarp: the
  // warp's lanes are done with the rows there).
  auto refill_rows = [&](T* tile, const T* base, int64_t stride, int i) {
    load_rows_async<D, 16, 32>(tile, base, stride, u_begin + i * kRows, p.L, p.reverse, lane, warp * 16);
    cp_async_commit();
  };
  prefetch_shared(0, 0);
  refill_rows(V, io.v, p.q.strides[2], 0);
  refill_rows(K, io.k, p.q2.strides[2], 0);
  pdl::wait_for_previous_grid();  // the scan's prefixes
  load_state<D>(Shi, Slo, zk_s, zv_s, ze_s, p, static_cast<int64_t>(bh) * (p.n_blocks + 1) + blk, tid);

  for (int i = 0; i < n_sub; ++i) {
    const int buf = i & 1;
    const bool more = i + 1 < n_sub;
    cp_async_wait<0>();
    sync_tiles();  // this sub-chunk's tiles are in; every warp is done with the other G, Q buffer
    if (more) prefetch_shared(i + 1, buf ^ 1);
    const T* G = Gs + buf * Layout::kTileElems;
    const T* Q = Qs + buf * Layout::kTileElems;
    const float* e_col = p.e ? es + buf * kRows : nullptr;
    const int u0 = u_begin + i * kRows;
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const float w0 = exp2f(lg * (r0 + 1)), w1 = exp2f(lg * (r1 + 1));
    float sacc[8][4];
    uint32_t pa[4][4];
    float den0, den1, unused0 = 0.f, unused1 = 0.f;
    float oacc[kNt][4];

    // dφk rows: (V Gᵀ + e) Q, and γ^(r+1) (V R + re).
    zero_rows<D>(oacc);
    logits<D>(sacc, V, G, warp, lane);
    weights(sacc, pa, 0.f, 0.f, e_col, lg, decay, u0, p.L, r0, r1, t, den0, den1);
    if (u0 > 0) {
      times_state<D, false>(oacc, V, Shi, nullptr, warp, lane, unused0, unused1);
      finish_inter<D>(oacc, w0, w1, 0.f, 0.f, nullptr, p.e ? ze_s : nullptr, t);
    }
    times_values<D>(oacc, pa, Q, lane);
    store_rows<D>(oacc, V, io.dk, p.out_strides[2], u0, p.L, p.reverse, warp, lane);
    __syncwarp();
    if (more) refill_rows(V, io.v, p.q.strides[2], i + 1);

    // dv rows: (K Qᵀ) G, and γ^(r+1) K Rᵀ.
    zero_rows<D>(oacc);
    logits<D>(sacc, K, Q, warp, lane);
    weights(sacc, pa, 0.f, 0.f, nullptr, lg, decay, u0, p.L, r0, r1, t, den0, den1);
    if (u0 > 0) {
      times_state<D, true>(oacc, K, Shi, nullptr, warp, lane, unused0, unused1);
      finish_inter<D>(oacc, w0, w1, 0.f, 0.f, nullptr, nullptr, t);
    }
    times_values<D>(oacc, pa, G, lane);
    store_rows<D>(oacc, K, io.dv, p.out2_strides[2], u0, p.L, p.reverse, warp, lane);
    __syncwarp();
    if (more) refill_rows(K, io.k, p.q2.strides[2], i + 1);

    if (more) {
      sync_tiles();  // every warp is done reading R and the vectors
      advance_state<D>(Shi, Slo, G, Q, g_sub, lg, decay, warp, lane);
      advance_vectors<D>(nullptr, nullptr, p.e ? ze_s : nullptr, G, Q, e_col, g_sub, lg, decay, tid);
    }
  }
}

// ---------------------------------------------------------------------------
// 5. The fused backward (v6): dφq, dφk and dv of one of the forward's blocks,
//    no decay (params.h). The block is walked from its last
//    sub-chunk to its first, each tile loaded with its rows reversed (as the
//    reverse passes do), at positions u = Lv − 1 − row with Lv = L rounded up
//    to 64: sub-chunks then fall on the forward's 64-row boundaries, and the
//    pad = Lv − L missing rows are the first ones of position 0's tile (zero
//    rows, which add nothing anywhere, and are not stored). Per sub-chunk:
//      dφq_t = Σ_{s≤t} (g_t·v_s + h_t) φk_s + g_t S' + h_t zv'  (S' = Σ v φkᵀ, zv' = Σ φk before the sub-chunk)
//      dφk_s = Σ_{t≥s} (v_s·g_t + h_t) φq_t + v_s R + ze      (R = Σ g φqᵀ, ze = Σ h φq after it)
//      dv_s  = Σ_{t≥s} (φk_s·φq_t) g_t + φk_s Rᵀ
//    (h, zv', ze with the normaliser only).
//    R grows from the later blocks' sum as in dkdv_kernel; S' starts from
//    the forward's prefix at the block's end (zv' likewise) and sheds each sub-chunk's sum
//    before that sub-chunk's dφq (a difference of fp32 sums, carried as hi +
//    lo like every state: no decay, whose inverse would grow without bound).
//    Read once: V, G, φq, φk; written: dφq, dφk, dv — against the v5 passes'
//    G, V, φk read again for dφq. Tiles are single-buffered but for G (73.8
//    KB of shared memory, 3 CTAs per SM at D = 64): V and K are refilled warp
//    by warp after the warp's dφk / dv rows, Q after R's update (waited for
//    only after the next dφq, which does not read it), and the next G goes
//    into the second G buffer from the start of each sub-chunk.

// Adds the row scalars c0 / c1 and keeps weights with column s ≥ row r (in a
// reversed tile, s ≤ r in the rows' order: dφq's causal mask), rounded to
// bf16 and packed as A fragments.
__device__ __forceinline__ void weights_upper(const float (&sacc)[8][4], uint32_t (&pa)[4][4], float c0, float c1,
                                              int r0, int r1, int t) {
  uint32_t packed[8][2];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int s = nt * 8 + 2 * t;
    packed[nt][0] = P::from(s >= r0 ? sacc[nt][0] + c0 : 0.f, s + 1 >= r0 ? sacc[nt][1] + c0 : 0.f);
    packed[nt][1] = P::from(s >= r1 ? sacc[nt][2] + c1 : 0.f, s + 1 >= r1 ? sacc[nt][3] + c1 : 0.f);
  }
  to_a_fragments(packed, pa);
}

// This warp's 16 rows of oacc straight from registers (no staging tile is
// free while the others still read every tile), positions u0 + r at rows
// Lv − 1 − u, those at or past pad.
template <int D>
__device__ __forceinline__ void store_rows_direct(const float (&oacc)[D / 8][4], T* ob, int64_t row_stride, int u0,
                                                  int Lv, int pad, int warp, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int u = u0 + warp * 16 + g + 8 * half;
    if (u < pad || u >= Lv) continue;
    T* row = ob + static_cast<int64_t>(Lv - 1 - u) * row_stride;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      *reinterpret_cast<uint32_t*>(row + nt * 8 + 2 * t) = P::from(oacc[nt][2 * half], oacc[nt][2 * half + 1]);
    }
  }
}

template <int D>
struct FusedSmem {
  static constexpr int kTileElems = Smem<D>::kTileElems;
  static constexpr int kStateElems = Smem<D>::kStateElems;
  // G twice, Q, V, K; R and S' as hi + lo; with the normaliser h of
  // the sub-chunk's rows, zv' = Σ φk before it and ze = Σ h φq after it.
  static constexpr size_t bytes() {
    return (5 * kTileElems + 4 * kStateElems) * sizeof(T) + (kRows + 2 * D) * sizeof(float) + kAlignSlack;
  }
};

template <int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 3 : 1) dqkv_kernel(PassParams p) {
  using Layout = FusedSmem<D>;
  constexpr int kNt = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* G = reinterpret_cast<T*>(aligned_smem(smem_raw));
  T* G_next = G + Layout::kTileElems;  // the next sub-chunk's G, loaded from the start of this one
  T* Q = G_next + Layout::kTileElems;
  T* V = Q + Layout::kTileElems;
  T* K = V + Layout::kTileElems;
  T* Rhi = K + Layout::kTileElems;
  T* Rlo = Rhi + Layout::kStateElems;
  T* Shi = Rlo + Layout::kStateElems;  // S' = Σ v φkᵀ before the sub-chunk
  T* Slo = Shi + Layout::kStateElems;
  float* hs = reinterpret_cast<float*>(Slo + Layout::kStateElems);  // [64] h of the sub-chunk's rows
  float* zv = hs + kRows;                                             // [D] Σ φk before the sub-chunk
  float* ze = zv + D;                                                 // [D] Σ h φq after it
  const bool norm = p.e != nullptr;  // the normaliser's terms (h = p.e)

  const int bh = blockIdx.x, blk = blockIdx.y, b = bh / p.H, h = bh % p.H;  // launch order: heads first
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const BackwardRows io(p, b, h);
  T* dqb = static_cast<T*>(p.out3) + b * p.out3_strides[0] + h * p.out3_strides[1];
  const int Lv = (p.L + kRows - 1) / kRows * kRows, pad = Lv - p.L;
  const int rows = p.block_chunks * kRows, row_begin = blk * rows;
  const int u_end = Lv - row_begin, u_begin = max(0, u_end - rows);
  const int n_sub = (u_end - u_begin) / kRows;

  auto load_shared = [&](T* tile, const T* base, int64_t stride, int u0) {
    load_rows_async<D>(tile, base, stride, u0, Lv, /*reverse=*/true, tid, 0, pad);
  };
  auto refill_rows = [&](T* tile, const T* base, int64_t stride, int u0) {
    load_rows_async<D, 16, 32>(tile, base, stride, u0, Lv, /*reverse=*/true, lane, warp * 16, pad);
    cp_async_commit();
  };
  // h of positions u0 .. u0 + 63 (0 where absent); visible after a barrier.
  auto load_h = [&](int u0) {
    if (norm && tid < kRows) {
      const int u = u0 + tid;
      hs[tid] = u >= pad && u < Lv ? p.e[static_cast<int64_t>(bh) * p.L + (Lv - 1 - u)] : 0.f;
    }
  };
  // zv' −= Σ φk over the K tile (S''s vector), column tid.
  auto shed_zv = [&]() {
    if (!norm || tid >= D) return;
    float sk, sv, se;
    column_sums<D>(sk, sv, se, K, V, nullptr, 0.f, false, tid);
    zv[tid] -= sk;
  };
  load_h(u_begin);
  load_shared(G, io.g, p.k.strides[2], u_begin);
  load_shared(Q, io.q, p.v.strides[2], u_begin);
  load_shared(V, io.v, p.q.strides[2], u_begin);
  load_shared(K, io.k, p.q2.strides[2], u_begin);
  cp_async_commit();
  const int64_t slots = p.n_blocks + 1;
  // The forward's S' and its inputs were complete before this pass's chain
  // began; R and ze come from its scan, waited for after the first dφq.
  load_matrix<D>(Shi, Slo, p.states2 + (bh * slots + blk + 1) * D * D, true, tid);
  if (norm && tid < D) zv[tid] = p.zk2[(bh * slots + blk + 1) * D + tid];
  if (n_sub <= 0) pdl::wait_for_previous_grid();  // a CTA of a chained grid waits before it exits (pdl.cuh)
  cp_async_wait<0>();
  sync_tiles();
  advance_state<D>(Shi, Slo, V, K, 1.f, 0.f, false, warp, lane, -1.f);  // S' before the first sub-chunk
  shed_zv();
  sync_tiles();

  for (int i = 0; i < n_sub; ++i) {
    const int u0 = u_begin + i * kRows;
    const bool more = i + 1 < n_sub;
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    if (more) {  // the other buffer's G was last read before the barrier that ended the previous sub-chunk
      load_shared(G_next, io.g, p.k.strides[2], u0 + kRows);
      cp_async_commit();
    }
    float sacc[8][4];
    uint32_t pa[4][4];
    float oacc[kNt][4];
    float den0, den1, unused0 = 0.f, unused1 = 0.f;

    // dφq rows (this warp's rows of G): (G Vᵀ + h, s ≥ r) K + G S' + h zv'.
    const float c0 = norm ? hs[r0] : 0.f, c1 = norm ? hs[r1] : 0.f;
    zero_rows<D>(oacc);
    logits<D>(sacc, G, V, warp, lane);
    weights_upper(sacc, pa, c0, c1, r0, r1, t);
    times_state<D, false>(oacc, G, Shi, nullptr, warp, lane, unused0, unused1);
    if (norm) finish_inter<D>(oacc, 1.f, 1.f, c0, c1, zv, nullptr, t);
    times_values<D>(oacc, pa, K, lane);
    store_rows_direct<D>(oacc, dqb, p.out3_strides[2], u0, Lv, pad, warp, lane);
    if (i == 0) {  // visible after the barrier below
      pdl::wait_for_previous_grid();
      load_matrix<D>(Rhi, Rlo, p.states + (bh * slots + p.n_blocks - 1 - blk) * D * D, false, tid);
      if (norm && tid < D) ze[tid] = p.ze[(bh * slots + p.n_blocks - 1 - blk) * D + tid];
    }
    if (more) cp_async_wait<1>();  // this sub-chunk's Q, loaded during the last one's S' update and the above
    else cp_async_wait<0>();       // (the group after it, if any: the next G)
    sync_tiles();  // every warp is done with V, K whole and with S'; Q is in

    // dφk rows: (V Gᵀ + h) Q + V R + ze.
    zero_rows<D>(oacc);
    logits<D>(sacc, V, G, warp, lane);
    weights(sacc, pa, 0.f, 0.f, norm ? hs : nullptr, 0.f, false, u0, Lv, r0, r1, t, den0, den1);
    times_state<D, false>(oacc, V, Rhi, nullptr, warp, lane, unused0, unused1);
    if (norm) finish_inter<D>(oacc, 1.f, 1.f, 0.f, 0.f, nullptr, ze, t);
    times_values<D>(oacc, pa, Q, lane);
    store_rows<D>(oacc, V, io.dk, p.out_strides[2], u0, Lv, true, warp, lane, pad);
    __syncwarp();
    if (more) refill_rows(V, io.v, p.q.strides[2], u0 + kRows);

    // dv rows: (K Qᵀ) G + K Rᵀ.
    zero_rows<D>(oacc);
    logits<D>(sacc, K, Q, warp, lane);
    weights(sacc, pa, 0.f, 0.f, nullptr, 0.f, false, u0, Lv, r0, r1, t, den0, den1);
    times_state<D, true>(oacc, K, Rhi, nullptr, warp, lane, unused0, unused1);
    times_values<D>(oacc, pa, G, lane);
    store_rows<D>(oacc, K, io.dv, p.out2_strides[2], u0, Lv, true, warp, lane, pad);
    __syncwarp();
    if (!more) break;
    refill_rows(K, io.k, p.q2.strides[2], u0 + kRows);

    // The state updates, each in the shadow of a load: R's while the last K
    // rows land, S''s while the next Q does (waited for after the next dφq).
    sync_tiles();  // every warp is done with G, Q, R and ze
    advance_state<D>(Rhi, Rlo, G, Q, 1.f, 0.f, false, warp, lane);  // R += Gᵀ Q
    advance_vectors<D>(nullptr, nullptr, norm ? ze : nullptr, G, Q, hs, 1.f, 0.f, false, tid);  // ze += Σ h φq
    sync_tiles();  // every warp is done with G, Q, h
    load_h(u0 + kRows);
    load_shared(Q, io.q, p.v.strides[2], u0 + kRows);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's V, K rows
    sync_tiles();     // everyone's: the next V, K are in
    advance_state<D>(Shi, Slo, V, K, 1.f, 0.f, false, warp, lane, -1.f);  // S' −= V'ᵀ K'
    shed_zv();
    sync_tiles();
    T* const x = G;
    G = G_next;
    G_next = x;
  }
}

// ---------------------------------------------------------------------------
// Backward preparation, one warp per row.
template <int D>
__global__ void prep_kernel(PrepParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= static_cast<int64_t>(p.B) * p.H * p.L) return;
  const int l = static_cast<int>(row % p.L);
  const int bh = static_cast<int>(row / p.L), b = bh / p.H, h = bh % p.H;
  constexpr int kPer = D / 32;  // 2 or 4 elements per lane
  const T* dO = static_cast<const T*>(p.dout.ptr) + b * p.dout.strides[0] + h * p.dout.strides[1] +
                l * p.dout.strides[2] + lane * kPer;
  const T* O = static_cast<const T*>(p.out.ptr) + b * p.out.strides[0] + h * p.out.strides[1] +
               l * p.out.strides[2] + lane * kPer;
  // h = −g·o with g as rounded for the passes, so that g·v_s + h is exactly
  // g·(v_s − o) and vanishes where o = v_s (one key, or equal values).
  const float r = p.rden ? p.rden[row] : 1.f;
  T* G = static_cast<T*>(p.g) + row * D + lane * kPer;
  float dot = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const T gj = __float2bfloat16_rn(__bfloat162float(dO[j]) * r);
    G[j] = gj;
    dot += __bfloat162float(gj) * __bfloat162float(O[j]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, off);
  if (lane == 0 && p.h) p.h[row] = -dot;
}

// ---------------------------------------------------------------------------
// The recurrent step: one CTA per (batch, head), thread d owns column d of S.
template <int D>
__global__ void step_kernel(StepParams p) {
  __shared__ float q[D], k[D], red[D];
  const int bh = blockIdx.x, d = threadIdx.x;
  const float gam = p.decay ? p.decay[bh % p.H] : 1.f;
  q[d] = __bfloat162float(static_cast<const T*>(p.q)[bh * D + d]);
  k[d] = __bfloat162float(static_cast<const T*>(p.k)[bh * D + d]);
  const float v = __bfloat162float(static_cast<const T*>(p.v)[bh * D + d]);
  __syncthreads();
  float* S = p.S + static_cast<int64_t>(bh) * D * D;
  float num = 0.f;
  for (int f = 0; f < D; ++f) {
    const float s = gam * S[f * D + d] + k[f] * v;
    S[f * D + d] = s;
    num += q[f] * s;
  }
  const float z = gam * p.z[bh * D + d] + k[d];
  p.z[bh * D + d] = z;
  red[d] = q[d] * z;
  __syncthreads();
  for (int s = D / 2; s > 0; s >>= 1) {
    if (d < s) red[d] += red[d + s];
    __syncthreads();
  }
  const float o = p.normalize ? num / (red[0] + p.eps) : num;
  static_cast<T*>(p.o)[bh * D + d] = __float2bfloat16_rn(o);
}

void check(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void check_dim(int D, const char* what) {
  if (D != 64 && D != 128) throw std::invalid_argument(std::string(what) + ": head dim must be 64 or 128");
}

// The pass kernels' grids run over (batch·head, block), heads fastest: the
// CTAs resident together then read the same rows of every head, which in the
// [B, L, H, D] layout of the model's projections are one contiguous row of
// memory (H100, 64K: 1.006 -> 0.996 ms fwd+bwd against block-first, alternated
// twice in one run; 16K unchanged). Blocks are at most 65535 (op.cpp checks).
//
// A pass is one chain of launches (kernels/pdl.cuh): block_state plainly, then
// each scan and the pass kernel as soon as the kernel before lets them, so
// that they launch, load their first tiles and wait for the prefixes while
// the CTAs of the kernel before drain.
template <int D>
void run_pass(const PassParams& p, cudaStream_t stream) {
  const int bh = p.B * p.H;
  bool chained = false;  // a kernel of this pass ran before the next launch
  if (!p.states_ready) {
    // Every block's sum but the last, whose prefix nothing reads; the forward
    // pass keeps the whole sum too (the fused backward's last block starts
    // from it). In mirror order the first block's sum is the one not needed.
    const bool forward = !p.reverse && !p.mirror && p.q2.ptr == nullptr;
    const int n_sums = forward ? p.n_blocks : p.n_blocks - 1;
    if (n_sums > 0) {
      const size_t smem1 = 4 * Smem<D>::kTileElems * sizeof(T) + 2 * kRows * sizeof(float) + kAlignSlack;
      auto state_kernel = p.log2_decay ? block_state_kernel<D, true> : block_state_kernel<D, false>;
      cudaFuncSetAttribute(state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem1));
      state_kernel<<<dim3(bh, n_sums), kThreads, smem1, stream>>>(p);
      check("linear_attention block_state_kernel");
      chained = true;
    }
    const float rows = static_cast<float>(p.block_chunks * kRows);
    auto scan = [&](float* buf, int64_t elems) {
      if (!buf) return;
      const dim3 grid(static_cast<unsigned>((elems + 31) / 32), bh);
      pdl::launch(scan_kernel, grid, dim3(32 * kScanRuns), 0, stream, chained, buf, elems, p.n_blocks + 1, n_sums,
                  p.log2_decay, p.H, rows);
      check("linear_attention scan_kernel");
      chained = true;
    };
    scan(p.states, static_cast<int64_t>(D) * D);
    scan(p.zk, D);
    scan(p.zv, D);
    scan(p.ze, D);
  }
  if (p.out3) {
    const size_t smem = FusedSmem<D>::bytes();
    cudaFuncSetAttribute(dqkv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    pdl::launch(dqkv_kernel<D>, dim3(bh, p.n_blocks), dim3(kThreads), smem, stream, chained, p);
    check("linear_attention dqkv_kernel");
    return;
  }
  const bool fused = p.q2.ptr != nullptr;
  const size_t smem = ChunkSmem<D>::bytes(3);  // both kernels: 3 double-buffered tiles' worth
  auto kernel = fused ? dkdv_kernel<D> : chunk_kernel<D>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  pdl::launch(kernel, dim3(bh, p.n_blocks), dim3(kThreads), smem, stream, chained, p);
  check(fused ? "linear_attention dkdv_kernel" : "linear_attention chunk_kernel");
}

}  // namespace

int linear_attention_resident_ctas(int D, bool fused) {
  check_dim(D, "linear_attention_resident_ctas");
  // Asked once per process and kind (every pass of a step needs it; the
  // occupancy query costs host time): all GPUs of a run are the same model.
  static std::atomic<int> cached[2][2] = {};
  std::atomic<int>& slot = cached[D == 128][fused];
  if (const int known = slot.load(std::memory_order_relaxed)) return known;
  int device = 0, sms = 0, per_sm = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  auto query = [&](auto kernel, size_t smem) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  };
  const int tiles = 3;
  if (D == 64) {
    if (fused) query(dkdv_kernel<64>, ChunkSmem<64>::bytes(tiles));
    else query(chunk_kernel<64>, ChunkSmem<64>::bytes(tiles));
  } else {
    if (fused) query(dkdv_kernel<128>, ChunkSmem<128>::bytes(tiles));
    else query(chunk_kernel<128>, ChunkSmem<128>::bytes(tiles));
  }
  check("linear_attention_resident_ctas");
  const int ctas = std::max(1, sms * per_sm);
  slot.store(ctas, std::memory_order_relaxed);
  return ctas;
}

void linear_attention_pass(const PassParams& p, DType, void* stream) {
  check_dim(p.D, "linear_attention_pass");
  if (p.B * p.H == 0 || p.L == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (p.D == 64) run_pass<64>(p, s);
  else run_pass<128>(p, s);
}

void linear_attention_prep(const PrepParams& p, DType, void* stream) {
  check_dim(p.D, "linear_attention_prep");
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.L;
  if (rows == 0) return;
  const unsigned grid = static_cast<unsigned>((rows + 7) / 8);
  auto s = static_cast<cudaStream_t>(stream);
  if (p.D == 64) prep_kernel<64><<<grid, 256, 0, s>>>(p);
  else prep_kernel<128><<<grid, 256, 0, s>>>(p);
  check("linear_attention prep_kernel");
}

void linear_attention_step(const StepParams& p, DType, void* stream) {
  check_dim(p.D, "linear_attention_step");
  if (p.B * p.H == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (p.D == 64) step_kernel<64><<<p.B * p.H, 64, 0, s>>>(p);
  else step_kernel<128><<<p.B * p.H, 128, 0, s>>>(p);
  check("linear_attention step_kernel");
}

}  // namespace longtrain::kernels::linear_attention
