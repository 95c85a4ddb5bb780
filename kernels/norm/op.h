// LayerNorm / RMSNorm with the residual add fused in, on CUDA: the LibTorch
// entry point, with autograd.
//
//   auto [y, sum] = add_norm_cuda(x, branch, weight, bias, eps)
//   x, branch: [..., D] bf16 or fp16 on one CUDA device, contiguous, same
//              shape; branch may be undefined (then y = norm(x), sum undefined);
//   weight:    [D] fp32; bias: [D] fp32 (LayerNorm) or undefined (RMSNorm);
//   sum:       x + branch, rounded to the dtype (the residual stream's next value);
//   y:         norm(sum) * weight + bias in the dtype, statistics in fp32.
// Backward: the gradient that reaches `sum` and the one through `y` leave as
// one dx (for both x and branch), plus dweight and dbias in fp32. Matches
// the unfused `s = x + branch; layer_norm(s, weight, bias)` (model/lm.cpp's
// fallback) up to rounding; D % 8 == 0 and D <= 2048.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

namespace longtrain::kernels {

// Why the kernel cannot take these ("" when it can).
std::string add_norm_kernel_unsupported(const torch::Tensor& x, const torch::Tensor& branch,
                                        const torch::Tensor& weight, const torch::Tensor& bias);

std::pair<torch::Tensor, torch::Tensor> add_norm_cuda(const torch::Tensor& x, const torch::Tensor& branch,
                                                      const torch::Tensor& weight, const torch::Tensor& bias,
                                                      double eps);

}  // namespace longtrain::kernels
