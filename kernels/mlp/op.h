// The Transformer block's MLP, proj(gelu_tanh(fc(x))), on CUDA as four
// cuBLASLt GEMMs forward and backward with the elementwise work in their
// epilogues (llm.c's and Transformer Engine's route):
//   forward   A = gelu(x W1^T + b1), H = x W1^T + b1 kept (GELU_AUX_BIAS);
//             y = A W2^T + b2 (BIAS);
//   backward  dW2 = dy^T A with db2 = Σ dy (BGRADB);
//             dH = (dy W2) * gelu'(H) with db1 = Σ dH (DGELU_BGRAD);
//             dW1 = dH^T x; dx = dH W1.
// This replaces LibTorch's GELU forward and backward kernels and the three
// bias-gradient reductions (~13 ms of the 134M model's 152 ms step on the
// H100, bench/results/profile_134m_2026-11-24_h100). cuBLASLt's GELU is the
// tanh form, the model's (model/lm.cpp).
//
//   y = gelu_mlp_cuda(x, w1, b1, w2, b2)
//   x: [..., K] bf16 or fp16 on a CUDA device, contiguous; w1: [N, K], b1: [N],
//   w2: [K2, N], b2: [K2], any floating dtype (cast to x's; gradients come back
//   in theirs); K, N, K2 multiples of 8. y: [..., K2] in x's dtype.
#pragma once

#include <torch/torch.h>

#include <string>

namespace longtrain::kernels {

// Why the fused path cannot take these ("" when it can).
std::string gelu_mlp_unsupported(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                                 const torch::Tensor& w2, const torch::Tensor& b2);

torch::Tensor gelu_mlp_cuda(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                            const torch::Tensor& w2, const torch::Tensor& b2);

}  // namespace longtrain::kernels
