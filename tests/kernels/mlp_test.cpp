// The block MLP on cuBLASLt epilogues (kernels/mlp) against the fp64 truth,
// by the rule
//   max_err(fused, truth) <= 2 * max_err(bf16/fp16 path, truth) + atol
// where the bf16/fp16 path is model/lm.cpp's fallback (addmm, gelu tanh,
// addmm) in the inputs' dtype, for the output and every gradient: dx, dW1,
// db1, dW2, db2 (fp32 parameters, as in the model). Rows from 1 to 4096,
// widths from 8 to the 134M model's 768 -> 3072; bf16 and fp16; a 3-D input.
// GPU cases skip without CUDA; the refusals run on CPU.
#include <gtest/gtest.h>

#include <string>

#include "kernels/mlp/op.h"
#include "tests/kernels/max_err.h"

namespace longtrain {
namespace {

using torch::Tensor;

TEST(GeluMlp, SaysWhyItCannotRun) {
  const auto w1 = torch::zeros({32, 16}), b1 = torch::zeros({32}), w2 = torch::zeros({16, 32}), b2 = torch::zeros({16});
  EXPECT_NE(kernels::gelu_mlp_unsupported(torch::zeros({4, 16}), w1, b1, w2, b2), "");
  if (!torch::cuda::is_available()) return;
  const auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto c1 = w1.cuda(), cb1 = b1.cuda(), c2 = w2.cuda(), cb2 = b2.cuda();
  EXPECT_EQ(kernels::gelu_mlp_unsupported(torch::zeros({4, 16}, bf), c1, cb1, c2, cb2), "");
  EXPECT_NE(kernels::gelu_mlp_unsupported(torch::zeros({4, 16}, torch::kCUDA), c1, cb1, c2, cb2).find("bf16"),
            std::string::npos);
  EXPECT_NE(kernels::gelu_mlp_unsupported(torch::zeros({4, 16}, bf), c1, {}, c2, cb2).find("missing"),
            std::string::npos);
  EXPECT_NE(kernels::gelu_mlp_unsupported(torch::zeros({4, 12}, bf), torch::zeros({32, 12}, torch::kCUDA), cb1, c2,
                                          cb2).find("multiples of 8"),
            std::string::npos);
  EXPECT_NE(kernels::gelu_mlp_unsupported(torch::zeros({4, 16}, bf), c1, cb1, torch::zeros({16, 24}, torch::kCUDA),
                                          cb2).find("chain"),
            std::string::npos);
}

struct Case {
  int64_t M, K, N;
  torch::ScalarType dtype;
};

class GeluMlpKernel : public testing::TestWithParam<Case> {};

struct Grads {
  Tensor y, dx, dw1, db1, dw2, db2;
};

// y = proj(gelu_tanh(fc(x))) and its gradients for the output gradient gy:
// fused (the kernel), or the fallback's ops in `acc`.
Grads path(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2, const Tensor& gy,
           bool fused, torch::ScalarType acc) {
  auto xs = x.to(acc).detach().clone().requires_grad_(true);
  std::vector<Tensor> p;
  for (const auto& t : {w1, b1, w2, b2}) p.push_back(t.detach().clone().requires_grad_(true));
  Tensor y;
  if (fused) {
    y = kernels::gelu_mlp_cuda(xs, p[0], p[1], p[2], p[3]);
  } else {
    auto h = torch::gelu(torch::addmm(p[1].to(acc), xs.reshape({-1, xs.size(-1)}), p[0].to(acc).t()), "tanh");
    y = torch::addmm(p[3].to(acc), h, p[2].to(acc).t()).view(gy.sizes());
  }
  (y.to(torch::kFloat64) * gy.to(torch::kFloat64)).sum().backward();
  return {y, xs.grad(), p[0].grad(), p[1].grad(), p[2].grad(), p[3].grad()};
}

TEST_P(GeluMlpKernel, OutputAndGradientsWithinTwiceTheFallbacksError) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  torch::manual_seed(c.M * 7 + c.K + c.N);
  const auto dev = torch::kCUDA;
  const auto x = torch::randn({2, c.M, c.K}, dev).to(c.dtype);
  const auto w1 = torch::randn({c.N, c.K}, dev) / std::sqrt(static_cast<double>(c.K));
  const auto b1 = 0.5 * torch::randn({c.N}, dev);
  const auto w2 = torch::randn({c.K, c.N}, dev) / std::sqrt(static_cast<double>(c.N));
  const auto b2 = 0.5 * torch::randn({c.K}, dev);
  const auto gy = torch::randn({2, c.M, c.K}, dev).to(c.dtype);
  const Grads truth = path(x, w1, b1, w2, b2, gy, false, torch::kFloat64);
  const Grads low = path(x, w1, b1, w2, b2, gy, false, c.dtype);
  { auto poison = torch::full({8 * 2 * c.M * (c.K + c.N) + 4096}, NAN, torch::dtype(c.dtype).device(dev)); }
  const Grads got = path(x, w1, b1, w2, b2, gy, true, c.dtype);
  ASSERT_EQ(got.y.sizes(), x.sizes());
  ASSERT_EQ(got.y.scalar_type(), c.dtype);
  auto check = [&](const char* name, const Tensor& g, const Tensor& t, const Tensor& l, bool param) {
    ASSERT_TRUE(g.defined()) << name;
    ASSERT_FALSE(g.isnan().any().item<bool>()) << name;
    if (param) EXPECT_EQ(g.scalar_type(), torch::kFloat32) << name << ": in the parameter's dtype";
    const double e = max_err(g, t), r = max_err(l, t), atol = 1e-3 * t.abs().max().item<double>() + 1e-6;
    EXPECT_LE(e, 2 * r + atol) << name << ": fused " << e << ", " << torch::toString(c.dtype) << " path " << r;
  };
  check("y", got.y, truth.y, low.y, false);
  check("dx", got.dx, truth.dx, low.dx, false);
  check("dw1", got.dw1, truth.dw1, low.dw1, true);
  check("db1", got.db1, truth.db1, low.db1, true);
  check("dw2", got.dw2, truth.dw2, low.dw2, true);
  check("db2", got.db2, truth.db2, low.db2, true);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GeluMlpKernel,
                         testing::Values(Case{37, 64, 256, torch::kBFloat16}, Case{1, 8, 32, torch::kBFloat16},
                                         Case{2048, 768, 3072, torch::kBFloat16}, Case{300, 128, 512, torch::kFloat16},
                                         Case{129, 40, 160, torch::kBFloat16}),
                         [](const testing::TestParamInfo<Case>& i) {
                           return "M" + std::to_string(i.param.M) + "_K" + std::to_string(i.param.K) + "_N" +
                                  std::to_string(i.param.N) + (i.param.dtype == torch::kBFloat16 ? "_bf16" : "_fp16");
                         });

}  // namespace
}  // namespace longtrain
