// model/linear.h: a Linear on [..., in] rows as one addmm equals the module's
// own forward, values and gradients (input, weight, bias), for 2-D, 3-D and
// 4-D inputs, a non-contiguous input and a layer without bias.
#include <gtest/gtest.h>

#include "model/linear.h"

namespace longtrain {
namespace {

void expect_same(torch::nn::Linear& m, const torch::Tensor& x_in) {
  auto x1 = x_in.detach().clone().requires_grad_(true), x2 = x_in.detach().clone().requires_grad_(true);
  auto y1 = m->forward(x1);
  auto g = torch::randn_like(y1);
  (y1 * g).sum().backward();
  const auto dw1 = m->weight.grad().clone();
  const auto db1 = m->bias.defined() ? m->bias.grad().clone() : torch::Tensor();
  m->zero_grad();
  auto y2 = linear(m, x2);
  ASSERT_EQ(y2.sizes(), y1.sizes());
  (y2 * g).sum().backward();
  EXPECT_TRUE(torch::allclose(y2, y1, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(x2.grad(), x1.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(m->weight.grad(), dw1, 1e-12, 1e-12));
  if (db1.defined()) EXPECT_TRUE(torch::allclose(m->bias.grad(), db1, 1e-12, 1e-12));
  m->zero_grad();
}

TEST(Linear, AddmmOnFlattenedRowsEqualsTheModule) {
  torch::manual_seed(3);
  torch::nn::Linear m(torch::nn::LinearOptions(6, 5));
  m->to(torch::kFloat64);
  expect_same(m, torch::randn({4, 6}, torch::kFloat64));
  expect_same(m, torch::randn({2, 3, 6}, torch::kFloat64));
  expect_same(m, torch::randn({2, 3, 4, 6}, torch::kFloat64));
  expect_same(m, torch::randn({3, 2, 6}, torch::kFloat64).transpose(0, 1));  // not contiguous
  torch::nn::Linear no_bias(torch::nn::LinearOptions(6, 5).bias(false));
  no_bias->to(torch::kFloat64);
  expect_same(no_bias, torch::randn({2, 3, 6}, torch::kFloat64));
  // The bias is really added (a layer whose weight is zero returns it on every row).
  torch::NoGradGuard ng;
  m->weight.zero_();
  auto y = linear(m, torch::randn({2, 3, 6}, torch::kFloat64));
  EXPECT_TRUE(torch::equal(y[1][2], m->bias));
}

}  // namespace
}  // namespace longtrain
