// The q/k/v split with RoPE (kernels/rope, model/rope.h split_qkv) against the
// reference (apply_rope on views of the split, autograd for the backward):
// q, k, v and the fused gradient by the rule
//   max_err(kernel, ref_fp64) <= 2 * max_err(ref_lowp, ref_fp64) + atol
// where ref_fp64 is the reference on the rounded input in fp64 and ref_lowp the
// reference in the input's dtype. Fresh random inputs per case; the kernel's
// outputs land in memory first filled with NaN (the caching allocator hands
// the freed block back); each case runs twice (a result that moves is a race).
// Odd L, B > 1, H > 1, Dh 8 / 64 / 128, bf16 and fp16, a position scale, and
// gradients that arrive in either layout. The CPU cases check split_qkv's
// torch path (the reference itself) and the refusals; GPU cases skip without CUDA.
#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "kernels/rope/op.h"
#include "model/rope.h"
#include "tests/kernels/max_err.h"

namespace longtrain {
namespace {

using torch::Tensor;

// The reference: views of the split, apply_rope on q and k.
std::tuple<Tensor, Tensor, Tensor> reference(const Tensor& fused, int64_t H, const RopeSpec& spec) {
  const int64_t B = fused.size(0), L = fused.size(1), Dh = fused.size(2) / (3 * H);
  auto t = fused.view({B, L, 3, H, Dh}).permute({2, 0, 3, 1, 4});
  return {apply_rope(t[0], spec), apply_rope(t[1], spec), t[2]};
}


// Outputs of the reference (or split_qkv) and the fused gradient for grads g.
struct Outputs {
  Tensor q, k, v, dfused;
};

template <typename Fn>
Outputs run(Fn fn, const Tensor& fused_in, const Tensor (&g)[3]) {
  auto fused = fused_in.detach().clone().requires_grad_(true);
  auto [q, k, v] = fn(fused);
  auto loss = (q * g[0].to(q.scalar_type())).sum() + (k * g[1].to(k.scalar_type())).sum() +
              (v * g[2].to(v.scalar_type())).sum();
  loss.backward();
  return {q.detach(), k.detach(), v.detach(), fused.grad()};
}

TEST(QkvRope, SplitWithoutRopeIsViews) {
  auto fused = torch::randn({2, 5, 3 * 2 * 8});
  RopeSpec off;
  auto [q, k, v] = split_qkv(fused, 2, off);
  auto t = fused.view({2, 5, 3, 2, 8}).permute({2, 0, 3, 1, 4});
  EXPECT_TRUE(torch::equal(q, t[0]));
  EXPECT_TRUE(torch::equal(k, t[1]));
  EXPECT_TRUE(torch::equal(v, t[2]));
  EXPECT_EQ(q.data_ptr(), fused.data_ptr()) << "a view, not a copy";
}

TEST(QkvRope, CpuPathIsTheReference) {
  auto fused = torch::randn({2, 7, 3 * 3 * 8}, torch::kFloat64);
  RopeSpec on;
  on.enabled = true;
  on.scale = 2.0;
  Tensor g[3] = {torch::randn({2, 3, 7, 8}, torch::kFloat64), torch::randn({2, 3, 7, 8}, torch::kFloat64),
                 torch::randn({2, 3, 7, 8}, torch::kFloat64)};
  auto a = run([&](const Tensor& f) { return split_qkv(f, 3, on); }, fused, g);
  auto b = run([&](const Tensor& f) { return reference(f, 3, on); }, fused, g);
  EXPECT_TRUE(torch::equal(a.q, b.q) && torch::equal(a.k, b.k) && torch::equal(a.v, b.v));
  EXPECT_TRUE(torch::allclose(a.dfused, b.dfused, 0, 1e-12));
  // The rotation moves q (it is not the identity) and keeps its norm.
  auto t = fused.view({2, 7, 3, 3, 8}).permute({2, 0, 3, 1, 4});
  EXPECT_GT(max_err(a.q.narrow(2, 1, 6), t[0].narrow(2, 1, 6)), 1e-3);
  EXPECT_TRUE(torch::allclose(a.q.norm(2, -1), t[0].norm(2, -1), 1e-6, 1e-6));  // fp32 tables: cos² + sin² = 1 ± 1e-7
}

TEST(QkvRope, KernelSaysWhyItCannotRun) {
  EXPECT_NE(kernels::qkv_rope_kernel_unsupported(torch::zeros({1, 4, 3 * 2 * 8}), 2), "");
  if (!torch::cuda::is_available()) return;
  auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  EXPECT_EQ(kernels::qkv_rope_kernel_unsupported(torch::zeros({1, 4, 3 * 2 * 8}, bf), 2), "");
  EXPECT_NE(kernels::qkv_rope_kernel_unsupported(torch::zeros({1, 4, 3 * 2 * 6}, bf), 2).find("multiple of 4"),
            std::string::npos);
  EXPECT_NE(kernels::qkv_rope_kernel_unsupported(torch::zeros({1, 4, 3 * 2 * 8}, torch::kCUDA), 2).find("bf16"),
            std::string::npos);
  EXPECT_NE(kernels::qkv_rope_kernel_unsupported(torch::zeros({1, 4, 2 * 3 * 2 * 8}, bf).narrow(2, 0, 48), 2)
                .find("contiguous"),
            std::string::npos);
}

struct Case {
  int64_t B, L, H, Dh;
  torch::ScalarType dtype;
  double scale;
  bool transposed_grads;  // grads stored [B, L, H, Dh] (as SDPA may hand them back)
};

std::string name_of(const Case& c) {
  return "B" + std::to_string(c.B) + "_L" + std::to_string(c.L) + "_H" + std::to_string(c.H) + "_D" +
         std::to_string(c.Dh) + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp16") + (c.scale != 1.0 ? "_scaled" : "") +
         (c.transposed_grads ? "_bhld_grads" : "");
}

class QkvRopeKernel : public testing::TestWithParam<Case> {};

TEST_P(QkvRopeKernel, MatchesReferenceWithinTwiceItsError) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  torch::manual_seed(c.L * 7 + c.Dh);
  RopeSpec spec;
  spec.enabled = true;
  spec.scale = c.scale;
  const auto dev = torch::kCUDA;
  auto fused = (torch::randn({c.B, c.L, 3 * c.H * c.Dh}, dev) * 3).to(c.dtype);
  Tensor g[3];
  for (auto& t : g) {
    t = c.transposed_grads ? torch::randn({c.B, c.L, c.H, c.Dh}, dev).to(c.dtype).transpose(1, 2)
                           : torch::randn({c.B, c.H, c.L, c.Dh}, dev).to(c.dtype);
  }
  const Tensor g64[3] = {g[0].to(torch::kFloat64), g[1].to(torch::kFloat64), g[2].to(torch::kFloat64)};
  auto truth = run([&](const Tensor& f) { return reference(f, c.H, spec); }, fused.to(torch::kFloat64), g64);
  auto lowp = run([&](const Tensor& f) { return reference(f, c.H, spec); }, fused, g);
  ASSERT_TRUE(kernels::qkv_rope_kernel_unsupported(fused, c.H).empty());
  Outputs first;
  for (int rep = 0; rep < 2; ++rep) {
    { auto poison = torch::full({4 * c.B * c.L * 3 * c.H * c.Dh}, NAN, fused.options()); }
    auto kern = run([&](const Tensor& f) { return split_qkv(f, c.H, spec); }, fused, g);
    // The kernel's q is stored [B, L, H, Dh] (the torch path's concatenation is [B, H, L, Dh]).
    ASSERT_EQ(kern.q.stride(2), c.H * c.Dh) << "split_qkv did not take the kernel";
    const std::pair<const char*, std::pair<Tensor, Tensor>> checks[] = {
        {"q", {kern.q, lowp.q}}, {"k", {kern.k, lowp.k}}, {"v", {kern.v, lowp.v}}, {"dfused", {kern.dfused, lowp.dfused}}};
    const Tensor truths[] = {truth.q, truth.k, truth.v, truth.dfused};
    for (int i = 0; i < 4; ++i) {
      const auto& [name, pair] = checks[i];
      ASSERT_FALSE(pair.first.isnan().any().item<bool>()) << name << " has NaN";
      const double atol = 1e-3 * truths[i].abs().max().item<double>();
      const double e_kern = max_err(pair.first, truths[i]), e_ref = max_err(pair.second, truths[i]);
      EXPECT_LE(e_kern, 2 * e_ref + atol) << name << ": kernel " << e_kern << ", reference " << e_ref;
    }
    if (rep == 0) first = kern;
    else {
      EXPECT_TRUE(torch::equal(kern.q, first.q) && torch::equal(kern.dfused, first.dfused)) << "runs differ";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, QkvRopeKernel,
                         testing::Values(Case{1, 1, 1, 8, torch::kBFloat16, 1.0, false},
                                         Case{2, 37, 3, 64, torch::kBFloat16, 1.0, false},
                                         Case{2, 37, 3, 64, torch::kBFloat16, 1.0, true},
                                         Case{1, 1000, 2, 128, torch::kFloat16, 4.0, false},
                                         Case{3, 129, 12, 64, torch::kFloat16, 1.0, true},
                                         Case{1, 4097, 4, 64, torch::kBFloat16, 1.0, false}),
                         [](const testing::TestParamInfo<Case>& i) { return name_of(i.param); });

}  // namespace
}  // namespace longtrain
