// The q/k/v split with RoPE on CUDA: the LibTorch entry point.
//
//   auto [q, k, v] = qkv_rope_cuda(fused, heads, cos, sin)
//   fused: [B, L, 3 · H · Dh] bf16 or fp16 on a CUDA device, contiguous (the
//          mixers' fused q/k/v projection), Dh a multiple of 4;
//   cos, sin: [L, Dh / 2] fp32 on the same device (model/rope.h rope_tables).
//   q, k: [B, H, L, Dh] stored [B, L, H, Dh], rotated (GPT-NeoX halves) in fp32
//   and rounded once; v: [B, H, L, Dh], a view of fused (no copy).
//   Differentiable in fused: the backward writes the fused gradient in one
//   pass (kernels/rope/rope.cu). Matches model/rope.h apply_rope on the split.
#pragma once

#include <torch/torch.h>

#include <string>
#include <tuple>

namespace longtrain::kernels {

// Why the kernel cannot take this fused projection ("" when it can).
std::string qkv_rope_kernel_unsupported(const torch::Tensor& fused, int64_t heads);

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> qkv_rope_cuda(const torch::Tensor& fused, int64_t heads,
                                                                     const torch::Tensor& cos,
                                                                     const torch::Tensor& sin);

}  // namespace longtrain::kernels
