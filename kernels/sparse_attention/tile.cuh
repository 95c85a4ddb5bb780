// Tile primitives of the sparse attention kernels: async copies of 64 x D
// tiles into swizzled shared memory (the wgmma operands' form), the packing
// of fp32 accumulators into the next product's A fragments, the scores' mask,
// and the register layouts they imply (also the linear-attention kernels').
//
// Fragment layout of mma.m16n8k16 (lane = 4 * g + t), which is also a
// warpgroup product's layout for warp w's 16 rows (kernels/wgmma.cuh):
//   A (16 x 16): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   C (16 x 8):  c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// Two adjacent C tiles (n = 16 columns) in bf16 are exactly one A fragment,
// which is how P (and dS) feed the second product without shared memory.
// (The mma.sync kernels of v1-v3, with padded tiles and ldmatrix fragment
// loads, are in the history: NOTES.md.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/sparse_attention/params.h"
#include "kernels/swizzle.h"
#include "kernels/wgmma.cuh"

namespace longtrain::kernels::tile {

// The wgmma kernels' tiles: kTile x D elements in swizzle.h's layout,
// unpadded (8 or 16 KiB, so every tile stays on a 1024-byte boundary when the
// first does), from the first 1024-byte boundary of the dynamic shared memory.
template <int D>
struct WgSmem {
  static constexpr int kTileElems = kTile * D;
  // n tiles, `extra` bytes after them, and the alignment slack.
  static constexpr int bytes(int n, int extra = 0) { return n * kTileElems * 2 + extra + 1024; }
};

template <typename T>
struct Pack;
template <>
struct Pack<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t from(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 to(uint32_t x) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
  }
};
template <>
struct Pack<__half> {
  static __device__ __forceinline__ uint32_t from(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 to(uint32_t x) { return __half22float2(*reinterpret_cast<__half2*>(&x)); }
};

// C tiles (fp32, kN n8 tiles: 8 kN columns) packed as the kN / 2 k16 A
// fragments of the next product (P for P V, dS for dS K).
template <typename T, int kN>
__device__ __forceinline__ void pack_a(uint32_t (&a)[kN / 2][4], const float (&c)[kN][4]) {
#pragma unroll
  for (int kk = 0; kk < kN / 2; ++kk) {
    a[kk][0] = Pack<T>::from(c[2 * kk][0], c[2 * kk][1]);
    a[kk][1] = Pack<T>::from(c[2 * kk][2], c[2 * kk][3]);
    a[kk][2] = Pack<T>::from(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[kk][3] = Pack<T>::from(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <typename T>
__device__ __forceinline__ T* align_1024(unsigned char* raw) {
  return reinterpret_cast<T*>(raw + ((1024 - (smem_addr(raw) & 1023)) & 1023));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Asynchronous copy of rows [row0, row0 + 64) of a [L, D] matrix (row stride
// `stride` elements) into a tile in swizzle.h's layout; rows at or beyond L
// are zero-filled. A thread copies the same 16-byte column of every
// kRowsPerPass-th row: one 64-bit multiply per tile for its first row, then
// a pointer step per pass (v10; a 64-bit row * stride per chunk had been
// ~70 instructions per tile, ~30% of the forward's instructions per visit).
template <int D, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* tile, const T* src, int64_t stride, int row0, int L, int tid) {
  constexpr int kChunksPerRow = D * sizeof(T) / 16;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kTile % kRowsPerPass == 0,
                "tile copy must split evenly over the threads");
  const int r0 = tid / kChunksPerRow, col = (tid % kChunksPerRow) * (16 / sizeof(T));
  const int left = L - row0 - r0;  // pass i's row is in range when i * kRowsPerPass < left
  const T* g = src + static_cast<int64_t>(row0 + r0) * stride + col;
  const int64_t step = stride * kRowsPerPass;
#pragma unroll
  for (int i = 0; i < kTile / kRowsPerPass; ++i, g += step) {
    const bool in = i * kRowsPerPass < left;
    const uint32_t dst = smem_addr(tile + swizzled_offset<kTile>(r0 + i * kRowsPerPass, col));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(in ? g : src), "r"(in ? 16 : 0));
  }
}
// One 4-byte word copied asynchronously, or zero-filled when !in.
__device__ __forceinline__ void cp_async_word(void* dst, const void* src, bool in) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(in ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Max / sum over the 4 lanes that share a row of a C fragment.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// Pipeline depth of the visit walks (K/V tiles in the forward and dQ, Q/dO
// tiles in dK/dV). 3 stages measured no faster than 2 (v7, NOTES.md) and
// cost shared memory (the forward would drop to 3 CTAs per SM).
constexpr int kStages = 2;

// A visit's place in the layout, loaded a visit before its copy is
// requested (so that the copy's address does not wait on the load): the
// tile it visits (key tile for a row walk, query tile for a column walk)
// and its mask index (-1: full).
struct VisitRef {
  int tile = 0, mask = -1;
};
__device__ __forceinline__ VisitRef visit_ref(const int32_t* tiles, const int32_t* masks, int visit, int v1) {
  VisitRef r;
  if (visit < v1) r.tile = tiles[visit], r.mask = masks[visit];
  return r;
}

// Each stage's visit data beside its tiles: the tile and mask index (thread
// 0 stores them from registers) and a partial visit's 64 mask words (copied
// asynchronously with the tiles), so that a visit reads no index or mask
// from global memory (v7: those loads' latency held ~8-10% of the stall
// samples in every kernel, ncu).
struct StageMeta {
  uint64_t words[kStages][kTile];
  int32_t tile[kStages], mask[kStages];
};
// Stage `buf`'s visit data requested (before the stage's commit).
__device__ __forceinline__ void request_meta(StageMeta* m, const uint64_t* masks, const VisitRef& r, int buf, int tid) {
  if (r.mask >= 0 && tid < kTile / 2) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(&m->words[buf][2 * tid])),
                 "l"(masks + static_cast<int64_t>(r.mask) * kTile + 2 * tid));
  }
  if (tid == 0) m->tile[buf] = r.tile, m->mask[buf] = r.mask;
}

// A row walk's pipeline (forward, dQ): visit `visit`'s K and V tiles and
// visit data requested into stage `buf` as one commit group (an empty
// group past the row's end, so that every visit commits one and the wait
// count is constant). ks and vs are [kStages] swizzled tiles.
template <int D, int kThreads, typename T>
__device__ __forceinline__ void request_kv(T* ks, T* vs, StageMeta* m, const T* k, const T* v,
                                           const SparseAttentionParams& p, const VisitRef& r, bool any, int buf,
                                           int tid) {
  constexpr int E = WgSmem<D>::kTileElems;
  if (any) {
    load_tile_async<D, kThreads>(ks + buf * E, k, p.k_strides[2], r.tile * kTile, p.L, tid);
    load_tile_async<D, kThreads>(vs + buf * E, v, p.v_strides[2], r.tile * kTile, p.L, tid);
    request_meta(m, p.layout.masks, r, buf, tid);
  }
  cp_async_commit();
}
// The first visit's reference, from its work item (params.h: the item
// carries it, so that the CTA's first copy waits on the item's load alone).
__device__ __forceinline__ VisitRef first_visit(const int32_t* item) {
  VisitRef r;
  r.tile = item[5], r.mask = item[6];
  return r;
}

// The walk's first kStages - 1 visits requested (the first group also holds
// whatever the caller requested before, e.g. the Q tile); `first` is visit
// v0's reference (first_visit). Returns the next visit's reference.
template <int D, int kThreads, typename T>
__device__ __forceinline__ VisitRef prime_kv(T* ks, T* vs, StageMeta* m, const T* k, const T* v,
                                             const SparseAttentionParams& p, const VisitRef& first, int v0, int v1,
                                             int tid) {
  const SparseLayoutParams& lay = p.layout;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    request_kv<D, kThreads>(ks, vs, m, k, v, p, s == 0 ? first : visit_ref(lay.cols, lay.row_mask, v0 + s, v1),
                            v0 + s < v1, s, tid);
  }
  return visit_ref(lay.cols, lay.row_mask, v0 + kStages - 1, v1);
}
// The head of a visit: visit + kStages - 1 (whose reference `ahead` holds)
// requested into the stage the previous visit used (its readers passed the
// loop's closing barrier) and the reference after it loaded; this visit's
// copies awaited and made visible to the products. Returns this visit's
// stage.
template <int D, int kThreads, typename T>
__device__ __forceinline__ int next_kv_visit(T* ks, T* vs, StageMeta* m, const T* k, const T* v,
                                             const SparseAttentionParams& p, VisitRef& ahead, int visit, int v0,
                                             int v1, int tid) {
  const int i = visit - v0, next = visit + kStages - 1;
  request_kv<D, kThreads>(ks, vs, m, k, v, p, ahead, next < v1, (i + kStages - 1) % kStages, tid);
  ahead = visit_ref(p.layout.cols, p.layout.row_mask, next + 1, v1);
  cp_async_wait<kStages - 1>();
  wg::proxy_fence();  // the copies visible to the products' asynchronous proxy
  __syncthreads();
  return i % kStages;
}

// Head h's layout index (no load when every head reads layout 0).
__device__ __forceinline__ int layout_of(const SparseLayoutParams& lay, int h) {
  return lay.one_layout ? 0 : lay.head_layout[h];
}
// This CTA's work item (params.h's WorkItems): item blockIdx.y of head h's
// layout.
__device__ __forceinline__ const int32_t* work_item(const WorkItems& w, const SparseLayoutParams& lay, int h) {
  return w.items + (static_cast<int64_t>(layout_of(lay, h)) * w.n_items + blockIdx.y) * kItemFields;
}
// Split slot `slot`'s (first piece, number of pieces) in head h's layout.
__device__ __forceinline__ int2 split_pieces(const WorkItems& w, const SparseLayoutParams& lay, int h, int slot) {
  const int32_t* s = w.splits + (static_cast<int64_t>(layout_of(lay, h)) * w.n_split + slot) * kSplitFields;
  return make_int2(__ldcg(s + 1), __ldcg(s + 2));
}

// Whether this CTA is the last of a split slot's `count` pieces to finish,
// after every thread has written its partial (a fence per thread, then one
// count per CTA; the classic last-block pattern). The last one's later reads
// (__ldcg, from L2) see every piece's writes. All threads must call it.
__device__ __forceinline__ bool last_piece(int* done, int count) {
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(done, 1) == count - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The sum of n fp32 partials [64, D] (n x 64 x D from `part`, read from L2,
// added in order) into rows tile * 64 ... of a [L, D] output (row stride
// `stride`), by the CTA's kThreads threads: a split tile's last piece
// writing it out. Every thread's loads of one partial are in flight at once.
template <typename T, int D, int kThreads>
__device__ __forceinline__ void store_summed_rows(const float* part, int n, T* out, int64_t stride, int tile, int L) {
  constexpr int kVec = kTile * D / 4 / kThreads;  // float4s per thread
  static_assert(kVec * 4 * kThreads == kTile * D, "a tile must split evenly over the threads");
  float4 acc[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i = 0; i < n; ++i) {
    const float4* src = reinterpret_cast<const float4*>(part + static_cast<int64_t>(i) * kTile * D);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float4 x = __ldcg(src + threadIdx.x + j * kThreads);
      acc[j].x += x.x, acc[j].y += x.y, acc[j].z += x.z, acc[j].w += x.w;
    }
  }
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const int e = 4 * (threadIdx.x + j * kThreads), row = tile * kTile + e / D;
    if (row < L) {
      uint2 w;
      w.x = Pack<T>::from(acc[j].x, acc[j].y);
      w.y = Pack<T>::from(acc[j].z, acc[j].w);
      *reinterpret_cast<uint2*>(out + static_cast<int64_t>(row) * stride + e % D) = w;
    }
  }
}

// The masking of a row visit (forward and dQ), from its stage's visit data:
// the partial mask (null when the tile is full) and the key columns kept
// (the sequence end, the batch's excluded keys).
struct RowVisitMask {
  const uint64_t* mask;
  uint64_t keep;
  __device__ bool any() const { return mask != nullptr || keep != ~0ull; }
};
__device__ __forceinline__ RowVisitMask row_visit_mask(const SparseAttentionParams& p, const StageMeta* m, int b,
                                                       int buf) {
  const SparseLayoutParams& lay = p.layout;
  const int kt = m->tile[buf];
  RowVisitMask vm{m->mask[buf] >= 0 ? m->words[buf] : nullptr, ~0ull};
  if (kt == lay.n_tiles - 1 && p.L % kTile) vm.keep = (1ull << (p.L % kTile)) - 1;
  if (lay.exclude) vm.keep &= ~lay.exclude[static_cast<int64_t>(b) * lay.n_tiles + kt];
  return vm;
}

// Sets the scores of a row visit's disallowed elements to `fill`, in the C
// layout of a warpgroup's 64 x 64 product: this thread's rows row_a and
// row_b, columns nb * 8 + 2t (+1). The words are shifted by 2t once, so that
// each element tests a bit at a constant position.
__device__ __forceinline__ void mask_scores(float (&s)[kTile / 8][4], const RowVisitMask& vm, int row_a, int row_b,
                                            int t, float fill) {
  const uint64_t words[2] = {(vm.mask ? vm.mask[row_a] & vm.keep : vm.keep) >> (2 * t),
                             (vm.mask ? vm.mask[row_b] & vm.keep : vm.keep) >> (2 * t)};
#pragma unroll
  for (int nb = 0; nb < kTile / 8; ++nb) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (!((words[i >> 1] >> (nb * 8 + (i & 1))) & 1ull)) s[nb][i] = fill;
    }
  }
}

}  // namespace longtrain::kernels::tile
