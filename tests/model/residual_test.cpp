// model.residual: bf16 keeps the residual stream in bf16 under bf16 autocast
// (fp32 keeps it fp32). Without autocast the two are bit-identical; under
// autocast the stream's dtype differs, the loss and every gradient stay within
// bf16 noise of the fp32 stream, and bad values are recipe errors. On CUDA
// the bf16 stream runs its adds and norms through the fused kernel
// (kernels/norm) and the fp32 stream through LibTorch: the same bounds hold.
#include <gtest/gtest.h>

#include "kernels/norm/op.h"
#include "model/lm.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/device.h"

namespace longtrain {
namespace {

ModelConfig config(const std::string& residual, const std::string& norm) {
  ModelConfig c;
  c.vocab_size = 61;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 2;
  c.max_positions = 64;
  c.norm = norm;
  c.residual = residual;
  return c;
}

struct Outcome {
  torch::ScalarType stream;
  double loss;
  std::vector<torch::Tensor> grads;
};

Outcome run(const std::string& residual, const std::string& norm, bool autocast,
            torch::Device device = torch::kCPU) {
  torch::manual_seed(3);
  LanguageModel m(config(residual, norm));
  m->to(device);
  auto tokens = torch::randint(0, 61, {2, 40}, torch::kInt64).to(device);
  auto targets = torch::randint(0, 61, {2, 40}, torch::kInt64).to(device);
  AutocastGuard guard(device, autocast);
  Outcome r;
  r.stream = m->hidden(tokens, MixerContext{}).scalar_type();
  auto loss = m->loss(tokens, targets, /*loss_chunk=*/0, MixerContext{});
  loss.backward();
  r.loss = loss.item<double>();
  for (const auto& p : m->parameters()) r.grads.push_back(p.grad().clone());
  return r;
}

void expect_bf16_tracks_fp32(torch::Device device) {
  for (const std::string norm : {"layernorm", "rmsnorm"}) {
    SCOPED_TRACE(norm);
    const Outcome f = run("fp32", norm, true, device), b = run("bf16", norm, true, device);
    EXPECT_EQ(f.stream, torch::kFloat32);
    EXPECT_EQ(b.stream, torch::kBFloat16);
    EXPECT_NEAR(b.loss, f.loss, 0.01 * f.loss);
    ASSERT_EQ(b.grads.size(), f.grads.size());
    for (size_t i = 0; i < f.grads.size(); ++i) {
      ASSERT_TRUE(b.grads[i].defined()) << "parameter " << i;
      EXPECT_EQ(b.grads[i].scalar_type(), torch::kFloat32) << "parameter " << i;  // parameters stay fp32
      const double scale = f.grads[i].abs().max().item<double>();
      EXPECT_LT((b.grads[i] - f.grads[i]).abs().max().item<double>(), 0.1 * scale + 1e-6) << "parameter " << i;
    }
  }
}

TEST(Residual, Bf16StreamUnderAutocastTracksTheFp32Stream) { expect_bf16_tracks_fp32(torch::kCPU); }

TEST(Residual, Bf16StreamOnCudaThroughTheNormKernelTracksTheFp32Stream) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto bf = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  ASSERT_EQ(kernels::add_norm_kernel_unsupported(torch::zeros({2, 40, 32}, bf), torch::zeros({2, 40, 32}, bf),
                                                 torch::ones({32}, torch::kCUDA), torch::zeros({32}, torch::kCUDA)),
            "")
      << "the model's shapes must take the kernel";
  expect_bf16_tracks_fp32(torch::kCUDA);
}

TEST(Residual, WithoutAutocastBothAreTheSame) {
  const Outcome f = run("fp32", "layernorm", false), b = run("bf16", "layernorm", false);
  EXPECT_EQ(b.stream, torch::kFloat32);
  EXPECT_EQ(b.loss, f.loss);
  for (size_t i = 0; i < f.grads.size(); ++i) EXPECT_TRUE(torch::equal(b.grads[i], f.grads[i])) << i;
}

TEST(Residual, RecipeKeyListsItsValues) {
  EXPECT_EQ(load_recipe("", {"model.residual=bf16"}).model.residual, "bf16");
  EXPECT_EQ(load_recipe("", {}).model.residual, "fp32");
  const std::string e = recipe_error_of({"model.residual=fp16"});
  EXPECT_NE(e.find("model.residual"), std::string::npos) << e;
  EXPECT_NE(e.find("fp32, bf16"), std::string::npos) << e;
}

}  // namespace
}  // namespace longtrain
