// The 128-byte-swizzled shared-memory tile layout of the wgmma kernels
// (kernels/wgmma.cuh's descriptors name it): shared by the linear-attention
// and sparse-attention kernels, and plain C++ so that host tests check it.
#pragma once

namespace longtrain::kernels {

// The element offset of (row r, column c) in a 16-bit tile of kR rows (64
// for a tile of rows, D for a D x D state). Rows of 64 elements (128 bytes)
// with the 128-byte swizzle — the 16-byte chunk c of row r sits at chunk
// c ^ (r % 8) — and tiles wider than 64 columns stored as column halves of
// 64, one after the other. Every tile starts on a 1024-byte boundary, so this
// is the tensor cores' own swizzle (address bits 4-6 xor bits 7-9); ldmatrix
// and cp.async move 16-byte chunks, which it keeps whole and, 8 rows at a
// time, in distinct bank groups.
template <int kR>
#ifdef __CUDACC__
__host__ __device__
#endif
constexpr int swizzled_offset(int r, int c) {
  return (c >> 6) * (kR * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
}

}  // namespace longtrain::kernels
