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

// cos and sin of the angles of positions offset .. offset + L - 1: [L, Dh / 2]
// fp32 each, on `device`.
std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t L, int64_t Dh, const RopeSpec& spec, int64_t offset,
                                                    const torch::Device& device);

// The mixers' fused projection [B, L, 3 * H * Dh] split into q, k, v
// [B, H, L, Dh], with RoPE applied to q and k when spec.enabled. On CUDA in
// bf16/fp16 it is one kernel forward and one backward (kernels/rope/op.h);
// elsewhere the same math in torch ops (apply_rope on views of the split).
// Without RoPE, views of fused (its gradient is one stack, not three
// zero-filled buffers summed).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> split_qkv(const torch::Tensor& fused, int64_t heads,
                                                                 const RopeSpec& spec);

}  // namespace longtrain
