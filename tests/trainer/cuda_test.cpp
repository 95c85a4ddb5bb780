// GPU: the trainer on CUDA with bf16 autocast. Skipped without a CUDA device.
#include <gtest/gtest.h>

#include "tests/trainer/test_recipes.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/loop.h"

namespace longtrain {
namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

TEST(Cuda, TrainsInBf16AndLossFalls) {
  SKIP_WITHOUT_CUDA();
  const auto dir = fresh_run_dir("cuda_bf16");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult r = train(tiny_recipe(dir, {"train.device=cuda", "train.dtype=bf16", "train.steps=40"}), opt);
  EXPECT_LT(r.after.loss, r.before.loss - 1.5) << r.before.loss << " -> " << r.after.loss;
  EXPECT_GT(peak_memory_bytes(torch::Device(torch::kCUDA, 0)), 0);
}

TEST(Cuda, ResumesWithCudaRngState) {
  SKIP_WITHOUT_CUDA();
  const auto dir = fresh_run_dir("cuda_resume");
  TrainOptions opt;
  opt.print_recipe = false;
  opt.stop_after = 4;
  train(tiny_recipe(dir, {"train.device=cuda", "model.dropout=0.1"}), opt);
  TrainOptions rest;
  rest.print_recipe = false;
  rest.resume = "auto";
  TrainResult r = train(tiny_recipe(dir, {"train.device=cuda", "model.dropout=0.1"}), rest);
  EXPECT_EQ(r.step, 12);
  bool has_cuda_state = false;
  for (const auto& [name, t] : rng_states()) has_cuda_state = has_cuda_state || name == "cuda0";
  EXPECT_TRUE(has_cuda_state);
}

}  // namespace
}  // namespace longtrain
