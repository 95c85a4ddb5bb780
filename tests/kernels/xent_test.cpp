// The fused softmax cross-entropy (kernels/xent) against the fp64 truth on
// the same (rounded) logits, by the rule
//   max_err(kernel, truth) <= 2 * max_err(fp32 path, truth) + atol
// where the fp32 path is model/chunked_cross_entropy.cpp's own fallback
// (log_softmax, exp and minus one in fp32, the gradient rounded to the logits'
// dtype). Rows' losses and the gradient; uncounted targets (-100) give a loss
// of exactly 0; V a multiple of 8 (16-byte loads) and not (the scalar path);
// bf16 and fp16; logits of spread ±30. Also the whole chunked loss on CUDA
// (kernel inside) against the fp64 plain cross-entropy, loss and gradients.
// GPU cases skip without CUDA; the refusal runs on CPU.
#include <gtest/gtest.h>

#include <string>

#include "kernels/xent/op.h"
#include "model/chunked_cross_entropy.h"
#include "tests/kernels/max_err.h"

namespace longtrain {
namespace {

using torch::Tensor;

TEST(SoftmaxXent, SaysWhyItCannotRun) {
  EXPECT_NE(kernels::softmax_xent_kernel_unsupported(torch::zeros({2, 8})), "");
  if (!torch::cuda::is_available()) return;
  const auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  EXPECT_EQ(kernels::softmax_xent_kernel_unsupported(torch::zeros({2, 8}, bf)), "");
  EXPECT_NE(kernels::softmax_xent_kernel_unsupported(torch::zeros({2, 8}, torch::kCUDA)).find("bf16"),
            std::string::npos);
  EXPECT_NE(kernels::softmax_xent_kernel_unsupported(torch::zeros({8, 2}, bf).t()).find("contiguous"),
            std::string::npos);
}

struct Case {
  int64_t C, V;
  torch::ScalarType dtype;
  double spread;
};

class SoftmaxXentKernel : public testing::TestWithParam<Case> {};

TEST_P(SoftmaxXentKernel, LossAndGradientWithinTwiceTheFp32PathsError) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  torch::manual_seed(c.C * 31 + c.V);
  const auto dev = torch::kCUDA;
  auto logits = (torch::randn({c.C, c.V}, dev) * c.spread).to(c.dtype);
  auto targets = torch::randint(0, c.V, {c.C}, torch::dtype(torch::kInt64).device(dev));
  targets.index_put_({torch::indexing::Slice(0, c.C, 3)}, kIgnoreIndex);  // every third row uncounted
  const auto keep = targets.ne(kIgnoreIndex);
  const auto safe = torch::where(keep, targets, torch::zeros_like(targets)).unsqueeze(1);
  auto path = [&](torch::ScalarType acc) {  // the fallback's math in `acc`
    auto logp = torch::log_softmax(logits.to(acc), -1);
    auto loss = -(logp.gather(1, safe).squeeze(1) * keep.to(acc));
    auto d = logp.exp().scatter_add(1, safe, -torch::ones_like(safe, logp.options()));
    return std::make_pair(loss, d);
  };
  const auto [loss64, d64] = path(torch::kFloat64);
  const auto [loss32, d32] = path(torch::kFloat32);
  const Tensor d32_rounded = d32.to(c.dtype);
  { auto poison = torch::full({2 * c.C * c.V}, NAN, logits.options()); }
  const auto [loss, d] = kernels::softmax_xent_cuda(logits, targets);
  ASSERT_FALSE(d.isnan().any().item<bool>());
  EXPECT_TRUE(torch::equal(loss.masked_select(keep.logical_not()), torch::zeros_like(loss.masked_select(keep.logical_not()))));
  const auto krow = keep.unsqueeze(1);  // uncounted rows' gradients are zeroed by the caller
  const double e_loss = max_err(loss, loss64), r_loss = max_err(loss32, loss64);
  const double e_d = max_err(d * krow, d64 * krow), r_d = max_err(d32_rounded * krow, d64 * krow);
  EXPECT_LE(e_loss, 2 * r_loss + 1e-5 * loss64.abs().max().item<double>()) << "loss " << e_loss << " vs " << r_loss;
  EXPECT_LE(e_d, 2 * r_d + 1e-6) << "dlogits " << e_d << " vs " << r_d;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SoftmaxXentKernel,
                         testing::Values(Case{37, 1000, torch::kBFloat16, 3.0}, Case{5, 32000, torch::kBFloat16, 30.0},
                                         Case{64, 1001, torch::kFloat16, 3.0}, Case{3, 7, torch::kBFloat16, 1.0},
                                         Case{129, 258, torch::kFloat16, 10.0}),
                         [](const testing::TestParamInfo<Case>& i) {
                           return "C" + std::to_string(i.param.C) + "_V" + std::to_string(i.param.V) +
                                  (i.param.dtype == torch::kBFloat16 ? "_bf16" : "_fp16");
                         });

// chunked_cross_entropy on CUDA in bf16 (the kernel inside) against the plain
// cross-entropy in fp64 on the same rounded hidden and weight.
TEST(SoftmaxXent, ChunkedLossOnCudaMatchesThePlainLoss) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(5);
  const auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  auto hidden = torch::randn({300, 64}, bf).requires_grad_(true);
  auto weight = (torch::randn({1000, 64}, bf) * 0.3).requires_grad_(true);
  auto targets = torch::randint(0, 1000, {300}, torch::dtype(torch::kInt64).device(torch::kCUDA));
  targets.index_put_({torch::indexing::Slice(0, 10)}, kIgnoreIndex);
  ASSERT_EQ(kernels::softmax_xent_kernel_unsupported(torch::linear(hidden, weight).detach()), "");
  auto loss = chunked_cross_entropy(hidden, weight, targets, 128);
  loss.backward();
  auto h64 = hidden.detach().to(torch::kFloat64).requires_grad_(true);
  auto w64 = weight.detach().to(torch::kFloat64).requires_grad_(true);
  auto ref = torch::nn::functional::cross_entropy(torch::linear(h64, w64), targets,
                                                  torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
  ref.backward();
  EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 2e-3 * ref.item<double>());
  const double gh = h64.grad().abs().max().item<double>(), gw = w64.grad().abs().max().item<double>();
  EXPECT_LT(max_err(hidden.grad(), h64.grad()), 2e-2 * gh);
  EXPECT_LT(max_err(weight.grad(), w64.grad()), 2e-2 * gw);
  EXPECT_TRUE(torch::equal(hidden.grad().narrow(0, 0, 10), torch::zeros({10, 64}, bf))) << "uncounted rows";
}

}  // namespace
}  // namespace longtrain
