// Softmax cross-entropy of a chunk of logits on CUDA: the LibTorch entry point.
//
//   auto [loss, dlogits] = softmax_xent_cuda(logits, targets)
//   logits:  [C, V] bf16 or fp16 on a CUDA device, contiguous;
//   targets: [C] int64 on the same device; a target outside [0, V) (the
//            ignore index -100) is not counted;
//   loss:    [C] fp32, logsumexp(row) - row[target] (0 when not counted);
//   dlogits: [C, V] in the logits' dtype, softmax(row) - onehot(target),
//            computed in fp32 and rounded once.
// No autograd: model/chunked_cross_entropy.cpp calls it inside its own
// Function. The math is that file's fp32 path (log_softmax, exp, minus one).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

namespace longtrain::kernels {

// Why the kernel cannot take these logits ("" when it can).
std::string softmax_xent_kernel_unsupported(const torch::Tensor& logits);

std::pair<torch::Tensor, torch::Tensor> softmax_xent_cuda(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace longtrain::kernels
