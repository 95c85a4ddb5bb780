// A Linear layer on [..., in] rows as one addmm on the flattened rows, so that
// cuBLAS adds the bias in its epilogue. LibTorch 2.11's torch::nn::Linear ran
// these 3-D inputs as matmul plus a separate bias add_ (a pass over the output:
// 24.6 ms of the 134M model's 205 ms step on the H100, profile in
// bench/results/profile_134m_2026-11-24_h100/). Same math and autocast policy
// (addmm is on autocast's lower-precision list, like linear).
#pragma once

#include <torch/torch.h>

namespace longtrain {

inline torch::Tensor linear(torch::nn::Linear& m, const torch::Tensor& x) {
  if (!m->bias.defined() || x.dim() <= 2) return m->forward(x);
  auto sizes = x.sizes().vec();
  sizes.back() = m->weight.size(0);
  return torch::addmm(m->bias, x.reshape({-1, x.size(-1)}), m->weight.t()).view(sizes);
}

}  // namespace longtrain
