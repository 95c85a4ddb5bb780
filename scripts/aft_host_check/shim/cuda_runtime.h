// Host emulation of the CUDA runtime features the AFT kernels use (scripts/aft_host_check/run.sh only).

#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <mutex>
struct float2 { float x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline std::mutex g_atomic_mu;
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> l(g_atomic_mu); float o = *p; *p += v; return o; }
struct dim3 { unsigned x = 1, y = 1, z = 1; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
inline thread_local dim3 threadIdx, blockIdx, blockDim;
inline std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
// A warp: its lanes' barrier and one exchange slot per lane, for the shuffles.
struct EmulatedWarp {
  explicit EmulatedWarp(unsigned n) : bar(n) {}
  std::barrier<> bar;
  float slot[32];
};
inline thread_local EmulatedWarp* g_warp = nullptr;
inline float __shfl_xor_sync(unsigned, float x, int lane_mask) {
  const unsigned lane = threadIdx.x & 31;
  g_warp->slot[lane] = x;
  g_warp->bar.arrive_and_wait();
  const float r = g_warp->slot[lane ^ lane_mask];
  g_warp->bar.arrive_and_wait();
  return r;
}
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__
using std::min;
using std::max;
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
template <typename T> inline T __ldg(const T* p) { return *p; }
typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr int cudaSuccess = 0;
inline int g_launch_error = 0;
inline cudaError_t cudaGetLastError() { return g_launch_error; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated launch error"; }
template <typename K, typename P>
void emulate_launch(K kernel, dim3 grid, dim3 block, const P& p) {
  const unsigned n = block.x * block.y;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar(n);
      g_barrier = &bar;
      std::vector<std::unique_ptr<EmulatedWarp>> warps;
      for (unsigned w = 0; w < (n + 31) / 32; ++w) warps.push_back(std::make_unique<EmulatedWarp>(std::min(32u, n - 32 * w)));
      std::vector<std::thread> ts;
      for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx)
          ts.emplace_back([=, &p, &warps] {
            threadIdx = dim3(tx, ty); blockIdx = dim3(bx, by); blockDim = block;
            g_warp = warps[(ty * block.x + tx) / 32].get();
            kernel(p);
            g_barrier->arrive_and_drop();
            g_warp->bar.arrive_and_drop();
          });
      for (auto& t : ts) t.join();
    }
}
template <typename K, typename P>
void emulate_launch(K kernel, int grid, int block, const P& p) { emulate_launch(kernel, dim3(grid), dim3(block), p); }
