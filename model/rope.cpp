// See rope.h.
#include "model/rope.h"

#include "kernels/rope/op.h"

namespace longtrain {

std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t L, int64_t Dh, const RopeSpec& spec, int64_t offset,
                                                    const torch::Device& device) {
  TORCH_CHECK(Dh % 2 == 0, "rope needs an even head dimension, got ", Dh);
  const int64_t half = Dh / 2;
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  auto inv_freq = torch::pow(spec.base, -torch::arange(half, f32) * (2.0 / static_cast<double>(Dh)));  // [half]
  auto pos = (torch::arange(L, f32) + static_cast<double>(offset)) / spec.scale;                     // [L]
  auto angles = torch::outer(pos, inv_freq);                                                          // [L, half]
  return {angles.cos(), angles.sin()};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeSpec& spec, int64_t offset) {
  const int64_t L = x.size(2), Dh = x.size(3), half = Dh / 2;
  auto [cos32, sin32] = rope_tables(L, Dh, spec, offset, x.device());
  auto cos = cos32.to(x.scalar_type()), sin = sin32.to(x.scalar_type());
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> split_qkv(const torch::Tensor& fused, int64_t heads,
                                                                 const RopeSpec& spec) {
  const int64_t B = fused.size(0), L = fused.size(1), Dh = fused.size(2) / (3 * heads);
  if (spec.enabled && kernels::qkv_rope_kernel_unsupported(fused, heads).empty()) {
    auto [cos, sin] = rope_tables(L, Dh, spec, 0, fused.device());
    return kernels::qkv_rope_cuda(fused, heads, cos, sin);
  }
  // Unbound along the fused dim before the transpose: the backward's stack
  // then lands in [B, L, 3, H, Dh], fused's own layout, with no further copy.
  auto t = fused.view({B, L, 3, heads, Dh}).unbind(2);  // 3 x [B, L, H, Dh]
  auto q = t[0].transpose(1, 2), k = t[1].transpose(1, 2), v = t[2].transpose(1, 2);
  if (!spec.enabled) return {q, k, v};
  return {apply_rope(q, spec), apply_rope(k, spec), v};
}

}  // namespace longtrain
