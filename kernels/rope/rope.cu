// RoPE on the q/k/v split, forward and backward (params.h). One thread per
// (row, head, pair j of channel pairs): it rotates channels (2j, 2j + 1) of the
// first half with (h + 2j, h + 2j + 1) of the second half, h = Dh / 2, in
// fp32 with the fp32 cos/sin tables, and rounds once. The forward reads the
// fused projection and writes q and k; v stays a view of it. The backward
// applies the inverse rotation to dq and dk and copies dv, straight into the
// fused gradient: no zero-filled [3, B, H, L, Dh] buffers, no separate
// multiplies, slices and concatenations (what autograd ran before).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "kernels/rope/params.h"

namespace longtrain::kernels::rope {
namespace {

template <typename T>
struct Pair;
template <>
struct Pair<__nv_bfloat16> {
  using V = __nv_bfloat162;
  static __device__ float2 to(V v) { return __bfloat1622float2(v); }
  static __device__ V from(float2 f) { return __float22bfloat162_rn(f); }
};
template <>
struct Pair<__half> {
  using V = __half2;
  static __device__ float2 to(V v) { return __half22float2(v); }
  static __device__ V from(float2 f) { return __float22half2_rn(f); }
};

// This thread's (row, head, pair j) and the cos / sin of its two channels.
struct Site {
  int64_t row;  // b * L + l
  int b, l, h, c0, half;
  int64_t hd;  // H * Dh
  float2 c, s;
};

__device__ __forceinline__ bool site_of(const QkvRopeParams& p, Site& x) {
  const int pairs = p.Dh / 4;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(p.B) * p.L * p.H * pairs) return false;
  x.c0 = 2 * static_cast<int>(idx % pairs);
  const int64_t rest = idx / pairs;
  x.h = static_cast<int>(rest % p.H);
  x.row = rest / p.H;
  x.l = static_cast<int>(x.row % p.L);
  x.b = static_cast<int>(x.row / p.L);
  x.half = p.Dh / 2;
  x.hd = static_cast<int64_t>(p.H) * p.Dh;
  x.c = *reinterpret_cast<const float2*>(p.cos + static_cast<int64_t>(x.l) * x.half + x.c0);
  x.s = *reinterpret_cast<const float2*>(p.sin + static_cast<int64_t>(x.l) * x.half + x.c0);
  return true;
}

// (x1, x2) -> (x1 c - x2 s, x2 c + x1 s); sign = -1 applies the inverse.
__device__ __forceinline__ void rotate(float2& x1, float2& x2, float2 c, float2 s, float sign) {
  const float2 a = x1, b = x2;
  x1 = make_float2(a.x * c.x - sign * b.x * s.x, a.y * c.y - sign * b.y * s.y);
  x2 = make_float2(b.x * c.x + sign * a.x * s.x, b.y * c.y + sign * a.y * s.y);
}

template <typename T>
__global__ void qkv_rope_fwd_kernel(const QkvRopeParams p) {
  using V = typename Pair<T>::V;
  Site x;
  if (!site_of(p, x)) return;
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const V* in = static_cast<const V*>(p.fused) + ((x.row * 3 + t) * x.hd + x.h * p.Dh + x.c0) / 2;
    float2 x1 = Pair<T>::to(in[0]), x2 = Pair<T>::to(in[x.half / 2]);
    rotate(x1, x2, x.c, x.s, 1.f);
    V* out = static_cast<V*>(t == 0 ? p.q : p.k) + (x.row * x.hd + x.h * p.Dh + x.c0) / 2;
    out[0] = Pair<T>::from(x1);
    out[x.half / 2] = Pair<T>::from(x2);
  }
}

template <typename T>
__global__ void qkv_rope_bwd_kernel(const QkvRopeParams p) {
  using V = typename Pair<T>::V;
  Site x;
  if (!site_of(p, x)) return;
  const void* grads[3] = {p.dq, p.dk, p.dv};
  const int64_t* strides[3] = {p.dq_strides, p.dk_strides, p.dv_strides};
#pragma unroll
  for (int t = 0; t < 3; ++t) {
    const int64_t at = x.b * strides[t][0] + x.h * strides[t][1] + x.l * strides[t][2] + x.c0;
    const V* in = static_cast<const V*>(grads[t]) + at / 2;
    float2 g1 = Pair<T>::to(in[0]), g2 = Pair<T>::to(in[x.half / 2]);
    if (t < 2) rotate(g1, g2, x.c, x.s, -1.f);
    V* out = static_cast<V*>(p.dfused) + ((x.row * 3 + t) * x.hd + x.h * p.Dh + x.c0) / 2;
    out[0] = Pair<T>::from(g1);
    out[x.half / 2] = Pair<T>::from(g2);
  }
}

void check(const char* name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(err));
}

template <typename Kernel>
void launch(Kernel kernel, const QkvRopeParams& p, void* stream, const char* name) {
  if (p.Dh % 4 != 0) throw std::invalid_argument(std::string(name) + ": head dim must be a multiple of 4");
  const int64_t threads = static_cast<int64_t>(p.B) * p.L * p.H * (p.Dh / 4);
  if (threads == 0) return;
  constexpr int kBlock = 256;
  kernel<<<static_cast<unsigned>((threads + kBlock - 1) / kBlock), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(p);
  check(name);
}

}  // namespace

void qkv_rope_fwd(const QkvRopeParams& p, DType dtype, void* stream) {
  if (dtype == DType::kBFloat16) launch(qkv_rope_fwd_kernel<__nv_bfloat16>, p, stream, "qkv_rope_fwd_kernel");
  else launch(qkv_rope_fwd_kernel<__half>, p, stream, "qkv_rope_fwd_kernel");
}

void qkv_rope_bwd(const QkvRopeParams& p, DType dtype, void* stream) {
  if (dtype == DType::kBFloat16) launch(qkv_rope_bwd_kernel<__nv_bfloat16>, p, stream, "qkv_rope_bwd_kernel");
  else launch(qkv_rope_bwd_kernel<__half>, p, stream, "qkv_rope_bwd_kernel");
}

}  // namespace longtrain::kernels::rope
