// Tile primitives of the sparse attention kernels: async copies of 64 x D
// tiles into padded shared memory, ldmatrix fragment loads, the m16n8k16
// tensor-core product (bf16 / fp16 in, fp32 accumulate), and the register
// layouts they imply.
//
// Fragment layout of mma.m16n8k16 (lane = 4 * g + t):
//   A (16 x 16): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16 x 8):  c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// Two adjacent C tiles (n = 16 columns) in bf16 are exactly one A fragment,
// which is how P (and dS) feed the second product without shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/sparse_attention/params.h"
#include "kernels/swizzle.h"

namespace longtrain::kernels::tile {

// Shared-memory rows are padded by 8 elements (16 bytes), so the 8 rows an
// ldmatrix reads fall in 8 different 16-byte bank groups.
template <int D>
struct Smem {
  static constexpr int kStride = D + 8;           // elements per row
  static constexpr int kTileElems = kTile * kStride;
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

template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
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

// A fragment (16 x 16) of a row-major tile at (row0, col0).
template <int D, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int col0, int lane) {
  ldmatrix_x4(a, tile + (row0 + (lane & 15)) * Smem<D>::kStride + col0 + (lane >> 4) * 8);
}
// B fragments for two n8 blocks (n0, n0+8) and one k16 step at k0, where the
// tile stores B transposed: row = n, column = k (K in Q K^T). b[0], b[1]: n0;
// b[2], b[3]: n0 + 8.
template <int D, typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* tile, int n0, int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * Smem<D>::kStride + k0 + ((lane >> 3) & 1) * 8);
}
// B fragments for two n8 blocks (n0, n0+8) and one k16 step at k0, where the
// tile stores B as is: row = k, column = n (V in P V).
template <int D, typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* tile, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * Smem<D>::kStride + n0 + (lane >> 4) * 8);
}

// Asynchronous copy of rows [row0, row0 + 64) of a [L, D] matrix (row stride
// `stride` elements) into a padded tile, or with kSwizzled into a tile in
// swizzle.h's layout (the wgmma operands' form); rows at or beyond L are
// zero-filled.
template <int D, int kThreads, bool kSwizzled = false, typename T>
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
    const uint32_t dst = smem_addr(tile + (kSwizzled ? swizzled_offset<kTile>(r, col) : r * Smem<D>::kStride + col));
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

// Whether element (row r, key column c) of a tile visit is allowed: the
// partial mask (if any), the sequence end, and the per-batch exclusion word.
__device__ __forceinline__ bool allowed(const uint64_t* mask, uint64_t keep_cols, int r, int c) {
  const uint64_t bits = mask ? mask[r] & keep_cols : keep_cols;
  return (bits >> c) & 1ull;
}

}  // namespace longtrain::kernels::tile
