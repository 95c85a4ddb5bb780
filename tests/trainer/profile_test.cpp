// `longtrain train --profile`: the Kineto trace and the summary of where a
// step's time goes are written for the requested window, the run's results
// are those of an unprofiled run, and kernel names fall in the right category.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/trainer/test_recipes.h"
#include "trainer/loop.h"
#include "trainer/profile.h"

namespace longtrain {
namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

TEST(Profile, WritesTraceAndSummaryOfTheWindowAndChangesNothing) {
  TrainOptions plain;
  plain.print_recipe = false;
  const auto plain_dir = fresh_run_dir("profile_plain");
  train(tiny_recipe(plain_dir, {"train.steps=6", "checkpoint.every=0"}), plain);

  TrainOptions opt = plain;
  const auto run_dir = fresh_run_dir("profile_run");
  opt.profile_dir = run_dir + "/profile";
  opt.profile_steps = 2;
  opt.profile_warmup = 3;
  train(tiny_recipe(run_dir, {"train.steps=6", "checkpoint.every=0"}), opt);

  EXPECT_EQ(logged_losses(run_dir), logged_losses(plain_dir));  // recording changes no number

  const auto trace = read_json(opt.profile_dir + "/trace.json");
  ASSERT_TRUE(trace.contains("traceEvents"));
  bool saw_matmul = false;
  for (const auto& e : trace["traceEvents"]) saw_matmul |= e.value("name", "") == "aten::mm";
  EXPECT_TRUE(saw_matmul) << "the trace should hold the model's matrix products";

  const auto s = read_json(opt.profile_dir + "/summary.json");
  EXPECT_EQ(s["steps"], 2);
  EXPECT_EQ(s["first_step_of_invocation"], 4);  // after 3 warm-up steps
  EXPECT_GT(s["wall_ms_per_step"].get<double>(), 0.0);
  EXPECT_GT(s["busy_ms_per_step"].get<double>(), 0.0);
  // Busy time is top-level operators only (no double counting), so at most the wall time.
  EXPECT_LE(s["busy_ms_per_step"].get<double>(), s["wall_ms_per_step"].get<double>() * 1.05);
  ASSERT_TRUE(s["categories"].contains("matmul"));
  EXPECT_GT(s["categories"]["matmul"]["ms_per_step"].get<double>(), 0.0);
  EXPECT_FALSE(s["top"].empty());
  EXPECT_TRUE(std::filesystem::exists(opt.profile_dir + "/summary.txt"));
}

TEST(Profile, RunEndingInsideTheWindowStillWrites) {
  TrainOptions opt;
  opt.print_recipe = false;
  const auto run_dir = fresh_run_dir("profile_short");
  opt.profile_dir = run_dir + "/profile";
  opt.profile_steps = 10;
  opt.profile_warmup = 1;
  train(tiny_recipe(run_dir, {"train.steps=3", "checkpoint.every=0"}), opt);
  EXPECT_EQ(read_json(opt.profile_dir + "/summary.json")["steps"], 2);
}

TEST(Profile, KernelNamesFallInTheirCategory) {
  EXPECT_EQ(profile_category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"), "matmul");
  EXPECT_EQ(profile_category("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN"), "matmul");
  EXPECT_EQ(profile_category("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>"), "attention");
  EXPECT_EQ(profile_category("void longtrain::kernels::sparse_attention_fwd_kernel<64>"), "mixer kernels");
  EXPECT_EQ(profile_category("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>"), "norm");
  EXPECT_EQ(profile_category("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>"),
            "optimizer");
  EXPECT_EQ(profile_category("Memcpy HtoD (Pinned -> Device)"), "copy");
  EXPECT_EQ(profile_category("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>"), "elementwise");
}

}  // namespace
}  // namespace longtrain
