// The largest absolute difference of two tensors, in fp64: the kernel tests'
// error measure for the 2x rule (STYLE.md).
#pragma once

#include <torch/torch.h>

namespace longtrain {

inline double max_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

}  // namespace longtrain
