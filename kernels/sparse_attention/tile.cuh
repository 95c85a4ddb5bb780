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
// are zero-filled.
template <int D, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* tile, const T* src, int64_t stride, int row0, int L, int tid) {
  constexpr int kChunksPerRow = D * sizeof(T) / 16;
  constexpr int kChunks = kTile * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "tile copy must split evenly over the threads");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * (16 / sizeof(T));
    const int row = row0 + r;
    const bool in = row < L;
    const T* g = src + (in ? static_cast<int64_t>(row) * stride + col : 0);
    const uint32_t dst = smem_addr(tile + swizzled_offset<kTile>(r, col));
    const int bytes = in ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(g), "r"(bytes));
  }
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

// The head of a row walk's visit (forward, dQ): the next visit's K and V
// tiles copied into the other buffer, then this visit's awaited and made
// visible to the products; returns this visit's buffer index. ks and vs are
// [2] swizzled tiles, the first visit's already requested.
template <int D, int kThreads, typename T>
__device__ __forceinline__ int next_kv_visit(T* ks, T* vs, const T* k, const T* v, const SparseAttentionParams& p,
                                             int visit, int v0, int v1, int tid) {
  constexpr int E = WgSmem<D>::kTileElems;
  const int buf = (visit - v0) & 1;
  if (visit + 1 < v1) {
    const int next = p.layout.cols[visit + 1];
    load_tile_async<D, kThreads>(ks + (buf ^ 1) * E, k, p.k_strides[2], next * kTile, p.L, tid);
    load_tile_async<D, kThreads>(vs + (buf ^ 1) * E, v, p.v_strides[2], next * kTile, p.L, tid);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  wg::proxy_fence();  // the copies visible to the products' asynchronous proxy
  __syncthreads();
  return buf;
}

// This CTA's work item (params.h's WorkItems): item blockIdx.y of head h's
// layout.
__device__ __forceinline__ const int32_t* work_item(const WorkItems& w, const SparseLayoutParams& lay, int h) {
  return w.items + (static_cast<int64_t>(lay.head_layout[h]) * w.n_items + blockIdx.y) * kItemFields;
}

// A split tile's summed fp32 partials [64, D] into rows tile * 64 ... of a
// [L, D] output (row stride `stride`), by the CTA's threads.
template <typename T, int D>
__device__ __forceinline__ void store_tile_rows(const float* acc, T* out, int64_t stride, int tile, int L) {
  for (int e = 2 * threadIdx.x; e < kTile * D; e += 2 * blockDim.x) {
    const int row = tile * kTile + e / D;
    if (row < L) {
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(row) * stride + e % D) =
          Pack<T>::from(acc[e], acc[e + 1]);
    }
  }
}

// The masking of a row visit (forward and dQ): the partial mask (null when
// the tile is full) and the key columns kept (the sequence end, the batch's
// excluded keys).
struct RowVisitMask {
  const uint64_t* mask;
  uint64_t keep;
  __device__ bool any() const { return mask != nullptr || keep != ~0ull; }
};
__device__ __forceinline__ RowVisitMask row_visit_mask(const SparseAttentionParams& p, int b, int visit) {
  const SparseLayoutParams& lay = p.layout;
  const int kt = lay.cols[visit], mask_index = lay.row_mask[visit];
  RowVisitMask vm{mask_index >= 0 ? lay.masks + static_cast<int64_t>(mask_index) * kTile : nullptr, ~0ull};
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
