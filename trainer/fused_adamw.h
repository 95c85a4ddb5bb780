// AdamW through ATen's fused multi-tensor kernel (at::_fused_adamw_).
//
// torch::optim::AdamW updates one parameter at a time, a handful of kernels
// each (about 150 parameters x 6 launches per step for the 134M model);
// _fused_adamw_ does every parameter of a group in a few launches, on CUDA
// and, since torch 2.4, on CPU. Same math as torch::optim::AdamW (decoupled
// decay p *= 1 - lr*wd, bias-corrected moments, eps added after the square
// root); the two agree to fp32 rounding (tests/trainer/fused_adamw_test.cpp).
//
// The state is torch::optim::AdamW's own (AdamWParamState: step, exp_avg,
// exp_avg_sq), so checkpoints are interchangeable with the unfused optimizer
// and resume either way. The kernel reads the step count from a device tensor
// per parameter; those mirror the host counts and are written back to them
// when the optimizer is saved.
//
// set_found_inf(t): while t (0-dim fp32, on the parameters' device) is
// nonzero, a step leaves parameters, moments and step counts unchanged, decided
// on the device, so a skipped non-finite step costs no host synchronisation.
#pragma once

#include <torch/torch.h>

#include <map>

namespace longtrain {

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  void set_found_inf(torch::Tensor found_inf) { found_inf_ = std::move(found_inf); }

 private:
  // Writes the device step counts into the AdamWParamStates.
  void sync_steps();

  std::map<void*, torch::Tensor> steps_;  // per parameter: 0-dim fp32 step count on its device
  torch::Tensor found_inf_;
};

}  // namespace longtrain
