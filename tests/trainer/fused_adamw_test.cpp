// FusedAdamW (trainer/fused_adamw.h) against torch::optim::AdamW: the same
// updates to fp32 rounding, checkpoints interchangeable both ways, and a step
// marked by found_inf leaves everything as it was. Runs on CPU, where
// at::_fused_adamw_ has had a kernel since torch 2.4.
#include <gtest/gtest.h>

#include <sstream>

#include "trainer/fused_adamw.h"

namespace longtrain {
namespace {

std::vector<torch::Tensor> make_params() {
  torch::manual_seed(11);
  return {torch::randn({17, 5}).requires_grad_(), torch::randn({5}).requires_grad_(),
          torch::randn({3, 4, 2}).requires_grad_()};
}

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::Tensor> out;
  for (const auto& p : ps) out.push_back(p.detach().clone().requires_grad_());
  return out;
}

// Two groups (decayed and not), as the trainer builds them.
template <class Opt>
std::unique_ptr<Opt> make_opt(const std::vector<torch::Tensor>& ps) {
  auto opts = [](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(3e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{ps[0], ps[2]}, opts(0.1));
  groups.emplace_back(std::vector<torch::Tensor>{ps[1]}, opts(0.0));
  return std::make_unique<Opt>(groups, torch::optim::AdamWOptions(3e-2));
}

void set_grads(const std::vector<torch::Tensor>& ps, int64_t step) {
  torch::manual_seed(100 + step);
  for (const auto& p : ps) p.mutable_grad() = torch::randn_like(p);
}

void set_lr(torch::optim::Optimizer& o, double lr) {
  for (auto& g : o.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, const std::string& what) {
  for (size_t i = 0; i < a.size(); ++i) {
    // fp32: the kernels order the same operations differently.
    EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-5, 1e-6))
        << what << ": parameter " << i << " max diff " << (a[i] - b[i]).abs().max().item<double>();
  }
}

TEST(FusedAdamW, MatchesTorchAdamWOverSteps) {
  auto pa = make_params(), pb = clones(pa);
  auto plain = make_opt<torch::optim::AdamW>(pa);
  auto fused = make_opt<FusedAdamW>(pb);
  for (int64_t step = 0; step < 20; ++step) {
    const double lr = 3e-2 * (1.0 - step / 40.0);  // the schedule changes lr every step
    set_lr(*plain, lr);
    set_lr(*fused, lr);
    set_grads(pa, step);
    set_grads(pb, step);
    plain->step();
    fused->step();
  }
  expect_close(pa, pb, "after 20 steps");
}

TEST(FusedAdamW, CheckpointsAreInterchangeable) {
  auto pa = make_params(), pb = clones(pa);
  auto plain = make_opt<torch::optim::AdamW>(pa);
  auto fused = make_opt<FusedAdamW>(pb);
  for (int64_t step = 0; step < 5; ++step) {
    set_grads(pa, step);
    set_grads(pb, step);
    plain->step();
    fused->step();
  }
  // Swap: each continues from the other's saved state.
  std::stringstream from_fused, from_plain;
  torch::save(*fused, from_fused);
  torch::save(*plain, from_plain);
  auto pa2 = clones(pb), pb2 = clones(pa);
  auto plain2 = make_opt<torch::optim::AdamW>(pa2);
  auto fused2 = make_opt<FusedAdamW>(pb2);
  torch::load(*plain2, from_fused);
  torch::load(*fused2, from_plain);
  for (int64_t step = 5; step < 10; ++step) {
    set_grads(pa2, step);
    set_grads(pb2, step);
    plain2->step();
    fused2->step();
  }
  expect_close(pa2, pb2, "after the swap");
  const auto& st = plain2->state();
  ASSERT_EQ(st.size(), 3u);
  for (const auto& kv : st) EXPECT_EQ(static_cast<torch::optim::AdamWParamState&>(*kv.second).step(), 10);
}

TEST(FusedAdamW, FoundInfSkipsTheStepOnTheDevice) {
  auto pa = make_params(), pb = clones(pa);
  auto plain = make_opt<torch::optim::AdamW>(pa);
  auto fused = make_opt<FusedAdamW>(pb);
  for (int64_t step = 0; step < 6; ++step) {
    // Steps 2 and 4 are "non-finite": the fused optimizer is told so and must
    // act as if they never happened; the plain one simply does not step.
    const bool bad = step == 2 || step == 4;
    set_grads(pa, step);
    set_grads(pb, step);
    fused->set_found_inf(torch::full({}, bad ? 1.0 : 0.0));
    fused->step();
    if (!bad) plain->step();
  }
  expect_close(pa, pb, "with two skipped steps");
  std::stringstream saved;
  torch::save(*fused, saved);  // brings the device step counts into the state
  for (const auto& kv : fused->state()) {
    EXPECT_EQ(static_cast<torch::optim::AdamWParamState&>(*kv.second).step(), 4);
  }
}

}  // namespace
}  // namespace longtrain
