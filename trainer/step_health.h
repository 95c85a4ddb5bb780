// A training step's health, kept on the device: the gradient norm (clipped
// in place) and the non-finite steps of the fused path, counted between two
// host reads. torch::nn::utils::clip_grad_norm_ returns its norm as a double,
// which waits for the GPU every step; nothing here does until take().
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace longtrain {

// Loss or gradients went NaN/Inf and the recipe says to stop.
struct NonFiniteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The 2-norm of all gradients, as a 0-dim device tensor; scales them by
// min(1, max_norm / (norm + 1e-6)) (always: x * 1 is exact), as
// clip_grad_norm_ does. max_norm = infinity: measure only.
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// Throws NonFiniteError naming the step, the loss and the norm.
[[noreturn]] void throw_nonfinite(int64_t step, double loss, double grad_norm);

// Non-finite steps seen on the device since the last take(): how many, and
// the first one's step, loss and gradient norm.
class DeferredNonFinite {
 public:
  struct Seen {
    int64_t count = 0, first_step = 0;
    double loss = 0, grad_norm = 0;
  };
  // bad: 0-dim bool, whether step `step` (loss, grad_norm: 0-dim) was non-finite.
  void add(const torch::Tensor& bad, int64_t step, const torch::Tensor& loss, const torch::Tensor& grad_norm);
  // Reads (one host synchronisation) and forgets what was seen.
  Seen take();

 private:
  torch::Tensor acc_;  // [4] fp64: count, first step, its loss, its norm
};

}  // namespace longtrain
