// Warpgroup tensor-core products (wgmma, sm_90a), shared by the linear-attention
// and sparse-attention kernels: A from registers (the mma.m16n8k16 A fragment
// of each warp's 16 rows, which is wgmma's A layout for warp w of the group:
// rows 16w..16w+15) or from shared memory, B from shared memory through a
// matrix descriptor, fp32 accumulators in the mma.m16n8 C layout
// (d[n8 tile][4]). One B operand is read from shared memory once for the 4
// warps, where each warp's mma.sync reloaded all of it. Operands bf16 (the
// default) or fp16 (T = __half).
//
// The operands' shared-memory layout is swizzle.h's swizzled_offset (the
// 128-byte swizzle, which desc() names).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace longtrain::kernels::wg {

// Matrix descriptor of a 128-byte-swizzled operand at shared address `addr`:
// 8-row groups 1024 bytes apart (SBO); `lbo` the distance between 64-column
// halves (N-major operands wider than 64; unused by K-major ones).
__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo) {
  return static_cast<uint64_t>((addr >> 4) & 0x3fff) | static_cast<uint64_t>((lbo >> 4) & 0x3fff) << 16 |
         static_cast<uint64_t>(1024 >> 4) << 32 | static_cast<uint64_t>(1) << 62;
}

// B operand descriptors for k16 step kk of a swizzled tile of kR rows at
// shared address `tile`: desc_nk where the tile stores B transposed (row = n,
// column = k: K in Q Kᵀ), desc_kn where it stores B as is (row = k,
// column = n: V in P V; kTransB).
// The step's offset is added to the tile's descriptor rather than to the
// address before encoding, so that the unrolled steps share one encoding
// (the start address field holds address >> 4 in 14 bits: the same sum
// while the shared address stays below 256 KiB, as every sm_90 one does).
template <int kR>
__device__ __forceinline__ uint64_t desc_nk(uint32_t tile, int kk) {
  return desc(tile, 16) + static_cast<uint32_t>(((kk >> 2) * (kR * 128) + (kk & 3) * 32) >> 4);
}
template <int kR>
__device__ __forceinline__ uint64_t desc_kn(uint32_t tile, int kk) {
  return desc(tile, kR * 128) + static_cast<uint32_t>((kk * 16 * 128) >> 4);
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most kPending committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
__device__ __forceinline__ void wait_all() { wait<0>(); }

// Orders the compiler's uses of accumulator registers around the asynchronous
// products: after wait_all (no read moves above it) and before fence().
template <int kN>
__device__ __forceinline__ void fence_operand(float (&d)[kN][4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

// Generic-proxy writes to shared memory (ordinary stores, cp.async) made
// visible to the products' asynchronous proxy: each writing thread, before
// the barrier that precedes the products.
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The asm operand lists: accumulator tiles i .. i + 7 (32 registers) and the
// placeholders of the first 32 / 64 operands.
#define LT_WG_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define LT_WG_ACC8(d, i) \
  LT_WG_ACC4(d, i), LT_WG_ACC4(d, i + 1), LT_WG_ACC4(d, i + 2), LT_WG_ACC4(d, i + 3), LT_WG_ACC4(d, i + 4), \
      LT_WG_ACC4(d, i + 5), LT_WG_ACC4(d, i + 6), LT_WG_ACC4(d, i + 7)
#define LT_WG_D32 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}, "
#define LT_WG_D64 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, " \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "

// The instructions, their operand type TY ("bf16" or "f16") pasted into the
// opcode, and their operand lists: A from registers (RS) or shared memory
// (SS), N = 64 or 128 columns. scale-d is the predicate p: d = A B + d when
// set, d = A B (the accumulators' old values ignored) when not.
#define LT_WG_RS64(TY)                                                                         \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\nwgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY \
  " " LT_WG_D32 "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
#define LT_WG_RS128(TY)                                                                         \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY \
  " " LT_WG_D64 "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
#define LT_WG_RS_IN(a, desc, tb) "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(tb)
#define LT_WG_SS64(TY)                                                                         \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\nwgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY \
  " " LT_WG_D32 "%32, %33, p, 1, 1, %35, %36;\n}\n"
#define LT_WG_SS128(TY)                                                                         \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY \
  " " LT_WG_D64 "%64, %65, p, 1, 1, %67, %68;\n}\n"
#define LT_WG_SS_IN(da, db, ta, tb) "l"(da), "l"(db), "r"(scale_d), "n"(ta), "n"(tb)

// d += A B for m64 x N x k16 (N = 64: d[8][4], N = 128: d[16][4]) with A from
// registers; kTransB: B is N-major (B[k][n] stored with n contiguous), else
// K-major (stored [n][k], k contiguous). T: __nv_bfloat16 or __half.
template <bool kTransB, typename T = __nv_bfloat16>
__device__ __forceinline__ void wgmma_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d = 1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(LT_WG_RS64("f16") : LT_WG_ACC8(d, 0) : LT_WG_RS_IN(a, desc_b, kTransB ? 1 : 0));
  } else {
    asm volatile(LT_WG_RS64("bf16") : LT_WG_ACC8(d, 0) : LT_WG_RS_IN(a, desc_b, kTransB ? 1 : 0));
  }
}
template <bool kTransB, typename T = __nv_bfloat16>
__device__ __forceinline__ void wgmma_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d = 1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(LT_WG_RS128("f16") : LT_WG_ACC8(d, 0), LT_WG_ACC8(d, 8) : LT_WG_RS_IN(a, desc_b, kTransB ? 1 : 0));
  } else {
    asm volatile(LT_WG_RS128("bf16") : LT_WG_ACC8(d, 0), LT_WG_ACC8(d, 8) : LT_WG_RS_IN(a, desc_b, kTransB ? 1 : 0));
  }
}

// d += A B with A from shared memory too; kTransA: A is M-major (A[m][k]
// stored with m contiguous), else K-major.
template <bool kTransA, bool kTransB, typename T = __nv_bfloat16>
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int scale_d = 1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(LT_WG_SS64("f16") : LT_WG_ACC8(d, 0) : LT_WG_SS_IN(desc_a, desc_b, kTransA ? 1 : 0, kTransB ? 1 : 0));
  } else {
    asm volatile(LT_WG_SS64("bf16") : LT_WG_ACC8(d, 0) : LT_WG_SS_IN(desc_a, desc_b, kTransA ? 1 : 0, kTransB ? 1 : 0));
  }
}
template <bool kTransA, bool kTransB, typename T = __nv_bfloat16>
__device__ __forceinline__ void wgmma_ss(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b, int scale_d = 1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(LT_WG_SS128("f16") : LT_WG_ACC8(d, 0), LT_WG_ACC8(d, 8)
                 : LT_WG_SS_IN(desc_a, desc_b, kTransA ? 1 : 0, kTransB ? 1 : 0));
  } else {
    asm volatile(LT_WG_SS128("bf16") : LT_WG_ACC8(d, 0), LT_WG_ACC8(d, 8)
                 : LT_WG_SS_IN(desc_a, desc_b, kTransA ? 1 : 0, kTransB ? 1 : 0));
  }
}

#undef LT_WG_RS64
#undef LT_WG_RS128
#undef LT_WG_RS_IN
#undef LT_WG_SS64
#undef LT_WG_SS128
#undef LT_WG_SS_IN
#undef LT_WG_ACC4
#undef LT_WG_ACC8
#undef LT_WG_D32
#undef LT_WG_D64

// Issue (no fence, commit or wait) acc += A B over kSteps k16 steps: A's
// fragments a[kk] (issue) or descriptor desc_a(kk) (issue_ss), B's descriptor
// desc_of(kk) / desc_b(kk). Several issues may share one fence() before them
// and one commit() after, or each be committed as its own group and waited
// for in turn (wait<N>); fence_operand(acc) after the wait that covers it.
template <bool kTransB, typename T = __nv_bfloat16, int kN, int kSteps, typename Desc>
__device__ __forceinline__ void issue(float (&acc)[kN][4], const uint32_t (&a)[kSteps][4], Desc desc_of) {
  fence_operand(acc);
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) wgmma_rs<kTransB, T>(acc, a[kk], desc_of(kk));
}
// kOverwrite: acc = A B, its old values (uninitialised, say) ignored.
template <bool kTransA, bool kTransB, int kSteps, typename T = __nv_bfloat16, bool kOverwrite = false, int kN,
          typename DescA, typename DescB>
__device__ __forceinline__ void issue_ss(float (&acc)[kN][4], DescA desc_a, DescB desc_b) {
  fence_operand(acc);
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    wgmma_ss<kTransA, kTransB, T>(acc, desc_a(kk), desc_b(kk), kOverwrite && kk == 0 ? 0 : 1);
  }
}

// acc += A B over kSteps k16 steps, issued together, then waited for: the
// accumulators are the caller's again on return. A caution from the sparse
// forward (its NOTES.md, v4): Q's fragments loaded once and held in registers
// across a loop of such products gave wrong scores from the loop's second
// trip at D = 64 (not at D = 128, and the PTX looked right); the linear
// kernels load theirs before each product, and product_ss (A from shared
// memory) avoids the question.
template <bool kTransB, typename T = __nv_bfloat16, int kN, int kSteps, typename Desc>
__device__ __forceinline__ void product(float (&acc)[kN][4], const uint32_t (&a)[kSteps][4], Desc desc_of) {
  fence_operand(acc);
  fence();
  issue<kTransB, T>(acc, a, desc_of);
  commit();
  wait_all();
  fence_operand(acc);
}

// The same with A from shared memory: A's descriptor desc_a(kk).
template <bool kTransA, bool kTransB, int kSteps, typename T = __nv_bfloat16, bool kOverwrite = false, int kN,
          typename DescA, typename DescB>
__device__ __forceinline__ void product_ss(float (&acc)[kN][4], DescA desc_a, DescB desc_b) {
  fence_operand(acc);
  fence();
  issue_ss<kTransA, kTransB, kSteps, T, kOverwrite>(acc, desc_a, desc_b);
  commit();
  wait_all();
  fence_operand(acc);
}

}  // namespace longtrain::kernels::wg
