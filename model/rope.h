// Rotary position embedding (Su et al. 2021, "RoFormer"), GPT-NeoX layout:
// the first and second halves of each head's channels form the rotated pairs.
//
// x: [B, H, L, Dh] (Dh even) -> same shape. Position p is rotated by angle
// (p + offset) / scale * base^(-2i/Dh); scale > 1 is position interpolation
// (Chen et al. 2023), which stretches a model trained on L tokens to scale*L.
// Angles are computed in fp32 whatever x's dtype.
#pragma once

#include <torch/torch.h>

namespace longtrain {

struct RopeSpec {
  bool enabled = false;
  double base = 10000.0;
  double scale = 1.0;
};

torch::Tensor apply_rope(const torch::Tensor& x, const RopeSpec& spec, int64_t offset = 0);

}  // namespace longtrain
