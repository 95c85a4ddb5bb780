// Training: a tiny model overfits a fixed batch; loss falls on the synthetic
// corpus; resume is bit-exact; non-finite steps stop or are skipped.
#include <gtest/gtest.h>

#include "model/lm.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/checkpoint.h"
#include "trainer/loop.h"

namespace longtrain {
namespace {

TEST(Training, OverfitsAFixedBatch) {
  torch::manual_seed(0);
  ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.d_model = 64;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.max_positions = 32;
  LanguageModel m(cfg);
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0));
  auto batch = torch::randint(0, 64, {4, 33}, torch::kInt64);
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    auto logits = m->forward(batch.slice(1, 0, 32));
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 64}), batch.slice(1, 1, 33).reshape(-1));
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_GT(first, 3.5);  // ~ln(64) = 4.16 at initialisation
  EXPECT_LT(last, 0.2);
}

TEST(Training, LossFallsOnSyntheticCorpus) {
  const auto dir = fresh_run_dir("falls");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult r = train(tiny_recipe(dir, {"train.steps=40"}), opt);
  ASSERT_TRUE(r.has_before);
  EXPECT_EQ(r.step, 40);
  EXPECT_LT(r.after.loss, r.before.loss - 1.5) << r.before.loss << " -> " << r.after.loss;
  EXPECT_GT(r.after.long_range_count, 0);
}

TEST(Training, ResumeIsBitExact) {
  TrainOptions opt;
  opt.print_recipe = false;
  const auto straight = fresh_run_dir("straight");
  train(tiny_recipe(straight), opt);

  const auto split = fresh_run_dir("split");
  TrainOptions first = opt;
  first.stop_after = 5;
  TrainResult part = train(tiny_recipe(split), first);
  EXPECT_TRUE(part.interrupted);
  EXPECT_EQ(part.step, 5);
  TrainOptions second = opt;
  second.resume = "auto";
  TrainResult rest = train(tiny_recipe(split), second);
  EXPECT_EQ(rest.step, 12);
  EXPECT_FALSE(rest.has_before);

  const auto a = logged_losses(straight), b = logged_losses(split);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;

  // The final parameters are identical too.
  auto load = [](const std::string& run) {
    Recipe rc = tiny_recipe(run);
    rc.model.vocab_size = 258;
    LanguageModel m(rc.model);
    load_checkpoint(run + "/checkpoints/step-00000012", *m, nullptr, torch::kCPU);
    return m;
  };
  auto ma = load(straight), mb = load(split);
  auto pa = ma->named_parameters(), pb = mb->named_parameters();
  for (const auto& item : pa) EXPECT_TRUE(item.value().equal(pb[item.key()])) << item.key();
}

TEST(Training, NonFiniteLossStopsWithStep) {
  const auto dir = fresh_run_dir("nan_stop");
  TrainOptions opt;
  opt.print_recipe = false;
  try {
    train(tiny_recipe(dir, {"train.lr=1e30", "train.warmup=0", "train.grad_clip=0"}), opt);
    FAIL() << "expected NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("at step"), std::string::npos) << e.what();
  }
}

TEST(Training, NonFiniteStepsCanBeSkipped) {
  const auto dir = fresh_run_dir("nan_skip");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult r = train(tiny_recipe(dir, {"train.lr=1e30", "train.warmup=0", "train.grad_clip=0",
                                          "train.on_nonfinite=skip"}), opt);
  EXPECT_EQ(r.step, 12);
  EXPECT_GT(r.skipped_steps, 0);
}

TEST(Training, WeightDecayGroups) {
  auto w = torch::zeros({4, 4});
  auto b = torch::zeros({4});
  EXPECT_TRUE(decays("blocks.0.fc.weight", w, false));
  EXPECT_FALSE(decays("blocks.0.fc.bias", b, false));
  EXPECT_FALSE(decays("blocks.0.norm1.weight", b, false));
  EXPECT_FALSE(decays("tok_emb.weight", w, false));
  EXPECT_TRUE(decays("tok_emb.weight", w, true));
}

}  // namespace
}  // namespace longtrain
