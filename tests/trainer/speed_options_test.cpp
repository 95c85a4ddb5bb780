// The trainer's speed and memory switches: train.activation_checkpointing,
// train.loss_chunk and train.fused_adamw. Bad values are recipe errors that
// list the valid ones; runs with them track the plain run's losses; resume
// stays bit-exact through the fused optimizer; non-finite steps found on the
// device (fused AdamW, one process) still stop or are skipped.
#include <gtest/gtest.h>

#include <filesystem>

#include "model/lm.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/loop.h"

namespace longtrain {
namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(SpeedRecipe, BadValuesListTheValidOnes) {
  std::string e = recipe_error_of({"train.activation_checkpointing=selective"});
  EXPECT_TRUE(has(e, "train.activation_checkpointing") && has(e, "none, mixer, full")) << e;
  e = recipe_error_of({"train.fused_adamw=maybe"});
  EXPECT_TRUE(has(e, "train.fused_adamw") && has(e, "auto, true, false")) << e;
  e = recipe_error_of({"train.loss_chunk=-1"});
  EXPECT_TRUE(has(e, "train.loss_chunk")) << e;
  const Recipe r = load_recipe("", {});
  EXPECT_EQ(r.train.activation_checkpointing, "none");
  EXPECT_EQ(r.train.loss_chunk, 8192);
  EXPECT_EQ(r.train.fused_adamw, "auto");
  EXPECT_EQ(load_recipe("", {"train.fused_adamw=true"}).train.fused_adamw, "true");
}

TEST(SpeedTraining, SwitchesTrackThePlainRun) {
  TrainOptions opt;
  opt.print_recipe = false;
  const auto plain_dir = fresh_run_dir("speed_plain");
  train(tiny_recipe(plain_dir, {"train.loss_chunk=0", "train.fused_adamw=false", "model.dropout=0.1"}), opt);
  const auto fast_dir = fresh_run_dir("speed_fast");
  train(tiny_recipe(fast_dir, {"train.loss_chunk=48", "train.fused_adamw=true", "model.dropout=0.1",
                               "train.activation_checkpointing=full"}), opt);
  const auto a = logged_losses(plain_dir), b = logged_losses(fast_dir);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  // Step 1 sees identical weights: the loss agrees to fp32 summation order.
  EXPECT_NEAR(a[0], b[0], 1e-5);
  // Later steps drift by the optimizers' fp32 rounding only.
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-3) << "step " << i + 1;
}

TEST(SpeedTraining, ResumeIsBitExactWithFusedAdamW) {
  TrainOptions opt;
  opt.print_recipe = false;
  const std::vector<std::string> sets = {"train.fused_adamw=true", "train.activation_checkpointing=mixer"};
  const auto straight = fresh_run_dir("fused_straight");
  train(tiny_recipe(straight, sets), opt);
  const auto split = fresh_run_dir("fused_split");
  TrainOptions first = opt;
  first.stop_after = 5;
  train(tiny_recipe(split, sets), first);
  TrainOptions second = opt;
  second.resume = "auto";
  train(tiny_recipe(split, sets), second);
  const auto a = logged_losses(straight), b = logged_losses(split);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
}

TEST(SpeedTraining, DeviceSideNonFiniteStops) {
  const auto dir = fresh_run_dir("fused_nan_stop");
  TrainOptions opt;
  opt.print_recipe = false;
  try {
    train(tiny_recipe(dir, {"train.lr=1e30", "train.warmup=0", "train.grad_clip=0", "train.fused_adamw=true",
                            "train.log_every=4"}), opt);
    FAIL() << "expected NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_TRUE(has(e.what(), "at step")) << e.what();
  }
}

TEST(SpeedTraining, DeviceSideNonFiniteStepsAreSkipped) {
  const auto dir = fresh_run_dir("fused_nan_skip");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult r = train(tiny_recipe(dir, {"train.lr=1e30", "train.warmup=0", "train.grad_clip=0",
                                          "train.on_nonfinite=skip", "train.fused_adamw=true",
                                          "train.log_every=4"}), opt);
  EXPECT_EQ(r.step, 12);
  EXPECT_GT(r.skipped_steps, 0);
  const auto records = step_records(dir);
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.back()["skipped_steps"].get<int64_t>(), r.skipped_steps);
}

TEST(SpeedTraining, CurriculumPhasesKeepTheSwitches) {
  // The phase boundary builds a new model and optimizer: both must take the
  // phase's switches again and train as the plain staged run does.
  auto staged = [](const std::string& dir, std::vector<std::string> extra) {
    auto o = tiny_overrides(dir);
    for (const std::string s :
         {"model.max_positions=32", "model.mixer={type: sliding, block: 8}", "model.dropout=0.1",
          "curriculum.phases=[{seq_len: 32, steps: 4, window: 8, batch_size: 4}, "
          "{seq_len: 64, steps: 4, window: 16, batch_size: 2, lr: 1.5e-3, warmup: 1}]"})
      o.push_back(s);
    o.insert(o.end(), extra.begin(), extra.end());
    return load_recipe("", o);
  };
  TrainOptions opt;
  opt.print_recipe = false;
  const auto plain_dir = fresh_run_dir("speed_staged_plain");
  train(staged(plain_dir, {"train.loss_chunk=0", "train.fused_adamw=false"}), opt);
  const auto fast_dir = fresh_run_dir("speed_staged_fast");
  TrainResult r = train(staged(fast_dir, {"train.loss_chunk=40", "train.fused_adamw=true",
                                          "train.activation_checkpointing=mixer"}), opt);
  EXPECT_EQ(r.phase, 1);
  const auto a = logged_losses(plain_dir), b = logged_losses(fast_dir);
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-3) << "step " << i + 1;
}

TEST(SpeedRecipe, BenchE2eRecipesAreTheAnchorModel) {
  // bench/e2e/recipes: 18 files, each 65,536 tokens per step, and the model
  // is ANCHORS.md's 134M one.
  const auto dir = std::filesystem::path(LONGTRAIN_SOURCE_DIR) / "bench" / "e2e" / "recipes";
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const Recipe r = load_recipe(entry.path().string(), {});
    EXPECT_EQ(r.train.batch_size * r.train.seq_len, 65536) << entry.path();
    EXPECT_EQ(r.model.n_layers, 12) << entry.path();
    files += 1;
  }
  EXPECT_EQ(files, 18);
  Recipe r = load_recipe((dir / "hybrid-4k.yaml").string(), {});
  EXPECT_EQ(r.model.mixer_for(7).type, "full");
  EXPECT_EQ(r.model.mixer_for(8).type, "linear");
  LanguageModel m(r.model);
  EXPECT_NEAR(static_cast<double>(m->num_parameters()), 134e6, 2e6);
}

}  // namespace
}  // namespace longtrain
