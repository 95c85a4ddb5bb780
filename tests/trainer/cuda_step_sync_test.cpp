// GPU: a training step of bench/e2e's recipes (bf16 autocast, bf16 residual
// stream, chunked loss, gradient clipping on the device, fused AdamW with its
// device-side skip of non-finite steps; what trainer/loop.cpp runs between two
// log steps) never reads the device from the host. CUDA's sync debug mode makes
// such a read an error; the check is shown to bite on a step that reads the
// loss. The recipes are shrunk (d 256, L 1024, 2 layers) so the test is quick;
// the code paths are the same. Skipped without CUDA.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "model/lm.h"
#include "trainer/config.h"
#include "trainer/device.h"
#include "trainer/fused_adamw.h"
#include "trainer/step_health.h"
#include "tests/host_sync.h"

namespace longtrain {
namespace {

// bench/e2e's recipe, shrunk: d 256, L 1024, batch 2, and 2 layers (the
// hybrid's 12-layer pattern keeps its 12).
Recipe shrunk_recipe(const std::string& recipe) {
  const auto file = std::filesystem::path(LONGTRAIN_SOURCE_DIR) / "bench" / "e2e" / "recipes" / recipe;
  std::vector<std::string> sets = {"model.d_model=256", "model.n_heads=4", "train.seq_len=1024", "train.batch_size=2"};
  if (recipe.rfind("hybrid", 0) != 0) sets.push_back("model.n_layers=2");
  return load_recipe(file.string(), sets);
}

// The error a step raised under sync-debug "error" mode (tests/host_sync.h), or "".
std::string sync_error_of_step(const std::string& recipe, bool read_loss) {
  const torch::Device dev(torch::kCUDA, 0);
  const Recipe r = shrunk_recipe(recipe);
  torch::manual_seed(0);
  LanguageModel m(r.model);
  m->to(dev);
  m->train();
  auto params = m->parameters();
  FusedAdamW opt(params, torch::optim::AdamWOptions(1e-3).weight_decay(0.1));
  const int64_t B = r.train.batch_size, L = r.train.seq_len;
  auto step = [&] {
    opt.zero_grad();
    const auto tokens = torch::randint(0, r.model.vocab_size, {B, L + 1}, torch::dtype(torch::kInt64).device(dev));
    torch::Tensor loss;
    {
      AutocastGuard autocast(dev, true);
      loss = m->loss(tokens.slice(1, 0, L), tokens.slice(1, 1, L + 1), /*loss_chunk=*/512);
    }
    loss.backward();
    const auto norm = clip_grad_norm(params, 1.0);
    opt.set_found_inf(torch::logical_not(torch::isfinite(loss.detach()) & torch::isfinite(norm)).to(torch::kFloat32));
    opt.step();
    if (read_loss) (void)loss.item<double>();
  };
  step();  // warm-up: tile plans, RoPE tables, optimizer state, cuBLASLt handles
  return testing::host_sync_error(step);
}

class CudaStepSync : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaStepSync, TrainingStepReadsNothingBack) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  EXPECT_EQ(sync_error_of_step(GetParam(), false), "") << GetParam();
}

// On any machine: the shrunk recipes load and build (what the GPU tests step).
TEST(CudaStepSync, ShrunkRecipesBuild) {
  for (const std::string recipe : {"full-4k.yaml", "sliding-4k.yaml", "linear-4k.yaml", "hybrid-4k.yaml"}) {
    const Recipe r = shrunk_recipe(recipe);
    LanguageModel m(r.model);
    EXPECT_EQ(r.model.d_model, 256) << recipe;
    EXPECT_EQ(r.train.seq_len, 1024) << recipe;
    EXPECT_GT(m->parameters().size(), 0u) << recipe;
  }
}

TEST(CudaStepSync, TheCheckFiresOnAHostRead) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  EXPECT_NE(sync_error_of_step("sliding-4k.yaml", true), "");
}

INSTANTIATE_TEST_SUITE_P(E2eRecipes, CudaStepSync,
                         ::testing::Values("full-4k.yaml", "sliding-4k.yaml", "linear-4k.yaml", "hybrid-4k.yaml"),
                         [](const auto& info) {
                           auto name = info.param.substr(0, info.param.find('-'));
                           return name;
                         });

}  // namespace
}  // namespace longtrain
