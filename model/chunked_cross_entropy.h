// Output head + cross-entropy, fused and computed a chunk of tokens at a time.
//
//   hidden: [N, D], weight: [V, D] (the head, or the tied embedding),
//   targets: [N] int64 -> the mean over targets != -100 of
//   -log softmax(hidden @ weight^T)[target], a 0-dim fp32 tensor (fp64 for fp64 hidden).
//
// The plain path materialises the [N, V] logits and their gradient: at
// N = 1M tokens and V = 32000 that is 128 GB in fp32. Here forward walks N in
// chunks of `chunk` rows; for each it computes the chunk's logits (under
// autocast in its dtype, the softmax in fp32), its loss sum, and right away the
// gradients: d hidden for those rows and the chunk's share of d weight, summed
// in fp32. On CUDA with bf16/fp16 logits the softmax, loss and softmax - onehot
// of a chunk are one kernel (kernels/xent, fp32 inside); elsewhere torch ops
// in fp32. Backward only scales the stored gradients by the incoming one. Peak
// extra memory: a few [chunk, V] buffers (fp32, or the logits' dtype with the
// kernel) plus the [N, D] and [V, D] gradients. Semantics (ignore_index -100, mean over the counted targets, NaN
// when none counts) are torch::nn::functional::cross_entropy's; loss and
// gradients equal the plain path (tests/model/chunked_cross_entropy_test.cpp).
// Without grad mode (evaluation) it only sums the chunks' losses.
#pragma once

#include <torch/torch.h>

namespace longtrain {

constexpr int64_t kIgnoreIndex = -100;

torch::Tensor chunked_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& targets, int64_t chunk);

}  // namespace longtrain
