// A small gradcheck for LibTorch C++ (which has none): compares autograd
// gradients of sum(f(inputs) * w), for a fixed random w, with central finite
// differences in fp64. Meant for tiny shapes: it costs 2 * numel forwards.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace longtrain {

// inputs: fp64 tensors; those with requires_grad are checked. Fails the
// current test (with the input index, element and both values) on mismatch.
inline void expect_gradcheck(const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& f,
                             std::vector<torch::Tensor> inputs, double eps = 1e-6, double atol = 1e-5,
                             double rtol = 1e-4) {
  for (const auto& t : inputs) ASSERT_EQ(t.scalar_type(), torch::kFloat64) << "gradcheck needs fp64 inputs";
  torch::manual_seed(1234);
  auto out = f(inputs);
  auto w = torch::randn_like(out);
  auto objective = [&](const std::vector<torch::Tensor>& in) { return (f(in) * w).sum(); };
  auto loss = objective(inputs);
  std::vector<torch::Tensor> wrt;
  for (const auto& t : inputs) if (t.requires_grad()) wrt.push_back(t);
  auto grads = torch::autograd::grad({loss}, wrt, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                     /*allow_unused=*/true);
  torch::NoGradGuard no_grad;
  size_t g = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].requires_grad()) continue;
    auto analytic = grads[g++];
    if (!analytic.defined()) analytic = torch::zeros_like(inputs[i]);
    auto flat = inputs[i].detach().clone().view(-1);
    auto a = analytic.contiguous().view(-1);
    for (int64_t e = 0; e < flat.numel(); ++e) {
      std::vector<torch::Tensor> plus = inputs, minus = inputs;
      auto p = flat.clone(), m = flat.clone();
      p[e] += eps;
      m[e] -= eps;
      plus[i] = p.view(inputs[i].sizes());
      minus[i] = m.view(inputs[i].sizes());
      const double numeric = (objective(plus).item<double>() - objective(minus).item<double>()) / (2 * eps);
      const double got = a[e].item<double>();
      ASSERT_NEAR(got, numeric, atol + rtol * std::abs(numeric))
          << "input " << i << ", element " << e << ": autograd " << got << " vs finite difference " << numeric;
    }
  }
}

// Max absolute difference, for messages.
inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

}  // namespace longtrain
