// The fused residual add + LayerNorm / RMSNorm kernel (kernels/norm) against
// the fp64 truth on the same rounded inputs, by the rule
//   max_err(kernel, truth) <= 2 * max_err(bf16/fp16 path, truth) + atol
// where the bf16/fp16 path is the unfused fallback of model/lm.cpp run in the
// inputs' dtype (add, then LibTorch's layer_norm with the weight cast), for
// the sum, the output and every gradient: dx (= dbranch), dweight, dbias, with
// and without a gradient reaching the sum directly. D from 8 to 2048 (partial
// vectors, every register count), odd row counts, bf16 and fp16, LayerNorm
// and RMSNorm; outputs poisoned before each run. The refusals run on CPU.
#include <gtest/gtest.h>

#include <string>

#include "kernels/norm/op.h"
#include "tests/kernels/max_err.h"

namespace longtrain {
namespace {

using torch::Tensor;

TEST(AddNorm, SaysWhyItCannotRun) {
  const auto w = torch::ones({64});
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({2, 64}), {}, w, w), "");
  if (!torch::cuda::is_available()) return;
  const auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto wc = w.cuda();
  EXPECT_EQ(kernels::add_norm_kernel_unsupported(torch::zeros({2, 64}, bf), {}, wc, wc), "");
  EXPECT_EQ(kernels::add_norm_kernel_unsupported(torch::zeros({2, 64}, bf), torch::zeros({2, 64}, bf), wc, {}), "");
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({2, 64}, torch::kCUDA), {}, wc, wc).find("bf16"),
            std::string::npos);
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({2, 60}, bf), {}, wc, wc).find("multiple of 8"),
            std::string::npos);
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({2, 4096}, bf), {}, torch::ones({4096}, torch::kCUDA),
                                                 {}).find("2048"),
            std::string::npos);
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({64, 2}, bf).t(), {}, wc, wc).find("contiguous"),
            std::string::npos);
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({2, 64}, bf), torch::zeros({3, 64}, bf), wc, wc)
                .find("branch"),
            std::string::npos);
  EXPECT_NE(kernels::add_norm_kernel_unsupported(torch::zeros({2, 64}, bf), {}, wc.to(torch::kBFloat16), wc)
                .find("fp32"),
            std::string::npos);
}

struct Case {
  int64_t B, L, D;
  torch::ScalarType dtype;
  bool branch, rms, dsum;
};

class AddNormKernel : public testing::TestWithParam<Case> {};

struct Result {
  Tensor y, sum, dx, db_, dw, dbias;
};

// s = x + branch, y = norm(s) * w + b, loss = <y, gy> + <s, gs> in `acc`
// (kFloat64: the truth; the inputs' dtype: the fallback's path).
Result path(const Case& c, const Tensor& x, const Tensor& br, const Tensor& w, const Tensor& b, const Tensor& gy,
            const Tensor& gs, torch::ScalarType acc) {
  auto xa = x.to(acc).detach().clone().requires_grad_(true);  // .to() of the same dtype is x itself
  auto ba = br.to(acc).detach().clone().requires_grad_(true);
  auto wa = w.detach().clone().requires_grad_(true);
  auto bb = b.detach().clone().requires_grad_(true);
  auto s = c.branch ? xa + ba : xa;
  Tensor y;
  if (c.rms) {
    auto sf = acc == torch::kFloat64 ? s : s.to(torch::kFloat32);
    y = (sf * torch::rsqrt(sf.pow(2).mean(-1, true) + 1e-6)).to(acc) * wa.to(acc);
  } else {
    y = torch::layer_norm(s, {c.D}, wa.to(acc), bb.to(acc), 1e-5);
  }
  auto loss = (y.to(torch::kFloat64) * gy.to(torch::kFloat64)).sum();
  if (c.dsum) loss = loss + (s.to(torch::kFloat64) * gs.to(torch::kFloat64)).sum();
  loss.backward();
  return {y, s, xa.grad(), c.branch ? ba.grad() : Tensor(), wa.grad(), c.rms ? Tensor() : bb.grad()};
}

TEST_P(AddNormKernel, OutputsAndGradientsWithinTwiceTheFallbacksError) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  torch::manual_seed(c.B * 131 + c.L * 7 + c.D);
  const auto dev = torch::kCUDA;
  const auto opt = torch::dtype(c.dtype).device(dev);
  const auto x = (torch::randn({c.B, c.L, c.D}, dev) * 2 + 0.5).to(c.dtype);
  const auto br = torch::randn({c.B, c.L, c.D}, opt);
  const auto w = (1 + 0.3 * torch::randn({c.D}, dev));
  const auto b = 0.2 * torch::randn({c.D}, dev);
  const auto gy = torch::randn({c.B, c.L, c.D}, opt);
  const auto gs = torch::randn({c.B, c.L, c.D}, opt);

  const Result truth = path(c, x, br, w, b, gy, gs, torch::kFloat64);
  const Result low = path(c, x, br, w, b, gy, gs, c.dtype);

  { auto poison = torch::full({8 * c.B * c.L * c.D + 4096}, NAN, torch::dtype(torch::kFloat32).device(dev)); }
  auto xk = x.detach().clone().requires_grad_(true), bk = br.detach().clone().requires_grad_(true);
  auto wk = w.detach().clone().requires_grad_(true), biask = b.detach().clone().requires_grad_(true);
  auto [y, sum] = kernels::add_norm_cuda(xk, c.branch ? bk : Tensor(), wk, c.rms ? Tensor() : biask, c.rms ? 1e-6 : 1e-5);
  ASSERT_EQ(y.scalar_type(), c.dtype);
  ASSERT_EQ(sum.defined(), c.branch);
  auto loss = (y.to(torch::kFloat64) * gy.to(torch::kFloat64)).sum();
  if (c.dsum) loss = loss + ((c.branch ? sum : xk).to(torch::kFloat64) * gs.to(torch::kFloat64)).sum();
  loss.backward();

  auto check = [&](const char* name, const Tensor& got, const Tensor& ref, const Tensor& fallback) {
    ASSERT_TRUE(got.defined()) << name;
    ASSERT_FALSE(got.isnan().any().item<bool>()) << name;
    const double e = max_err(got, ref), r = max_err(fallback, ref);
    const double atol = 1e-3 * ref.abs().max().item<double>() + 1e-6;
    EXPECT_LE(e, 2 * r + atol) << name << ": kernel " << e << ", " << torch::toString(c.dtype) << " path " << r;
  };
  check("y", y, truth.y, low.y);
  if (c.branch) {
    check("sum", sum, truth.sum, low.sum);
    check("dbranch", bk.grad(), truth.db_, low.db_);
    EXPECT_TRUE(torch::equal(bk.grad(), xk.grad())) << "x and branch get the same gradient";
  }
  // Without a branch and a gradient on the sum, that gradient reaches x through
  // the loss's own use of x, not through the kernel; the truth includes it too.
  check("dx", xk.grad(), truth.dx, low.dx);
  check("dweight", wk.grad(), truth.dw, low.dw);
  if (!c.rms) check("dbias", biask.grad(), truth.dbias, low.dbias);
  else EXPECT_FALSE(biask.grad().defined());
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AddNormKernel,
    testing::Values(Case{2, 37, 768, torch::kBFloat16, true, false, true},
                    Case{2, 37, 768, torch::kBFloat16, true, false, false},
                    Case{1, 129, 768, torch::kBFloat16, false, false, true},
                    Case{3, 11, 64, torch::kFloat16, true, false, true},
                    Case{1, 5, 8, torch::kBFloat16, true, false, true},
                    Case{2, 33, 24, torch::kBFloat16, true, true, true},
                    Case{1, 300, 1000, torch::kFloat16, true, false, true},
                    Case{1, 17, 2048, torch::kBFloat16, true, true, false},
                    Case{4, 1000, 512, torch::kBFloat16, true, false, true},
                    Case{1, 3, 1536, torch::kFloat16, false, true, false}),
    [](const testing::TestParamInfo<Case>& i) {
      const Case& c = i.param;
      return "B" + std::to_string(c.B) + "_L" + std::to_string(c.L) + "_D" + std::to_string(c.D) +
             (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp16") + (c.branch ? "_add" : "") + (c.rms ? "_rms" : "_ln") +
             (c.dsum ? "_dsum" : "");
    });

// Rows beyond a CTA's first pass (the backward walks rows grid-stride) and
// many CTAs' partial weight sums: 65,536 rows of 768, as in the 134M model's
// step, against the fp64 truth of the weight and bias gradients.
TEST(AddNorm, WeightGradientsOverManyRowsAndBlocks) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(11);
  const auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto x = torch::randn({65536, 768}, bf), br = torch::randn({65536, 768}, bf), gy = torch::randn({65536, 768}, bf);
  auto w = torch::ones({768}, torch::kCUDA).requires_grad_(true), b = torch::zeros({768}, torch::kCUDA).requires_grad_(true);
  auto [y, sum] = kernels::add_norm_cuda(x, br, w, b, 1e-5);
  (y.to(torch::kFloat32) * gy.to(torch::kFloat32)).sum().backward();
  const auto s = sum.to(torch::kFloat64);  // the rounded sum the kernel normalised
  const auto xhat = (s - s.mean(-1, true)) / torch::sqrt(s.var(-1, false, true) + 1e-5);
  const auto g = gy.to(torch::kFloat64);
  const auto dw = (g * xhat).sum(0), db = g.sum(0);
  EXPECT_LT(max_err(w.grad(), dw), 1e-4 * dw.abs().max().item<double>() + 1e-2) << "dweight";
  EXPECT_LT(max_err(b.grad(), db), 1e-4 * db.abs().max().item<double>() + 1e-2) << "dbias";
}

}  // namespace
}  // namespace longtrain
