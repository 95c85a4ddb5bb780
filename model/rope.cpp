// See rope.h.
#include "model/rope.h"

namespace longtrain {

torch::Tensor apply_rope(const torch::Tensor& x, const RopeSpec& spec, int64_t offset) {
  const int64_t L = x.size(2), Dh = x.size(3), half = Dh / 2;
  TORCH_CHECK(Dh % 2 == 0, "rope needs an even head dimension, got ", Dh);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(x.device());
  auto inv_freq = torch::pow(spec.base, -torch::arange(half, f32) * (2.0 / static_cast<double>(Dh)));  // [half]
  auto pos = (torch::arange(L, f32) + static_cast<double>(offset)) / spec.scale;                     // [L]
  auto angles = torch::outer(pos, inv_freq);                                                          // [L, half]
  auto cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

}  // namespace longtrain
