// Hybrid stacks (model.mixers + model.pattern) and the shipped recipes: the
// pattern expands to the right mixer per layer with its own options, bad
// patterns are clear errors, and every recipe in recipes/ loads, builds and
// trains two steps through the real trainer.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "model/lm.h"
#include "model/sparse_mixer.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/device.h"
#include "trainer/loop.h"

namespace longtrain {
namespace {

std::vector<std::string> types_of(const Recipe& r) {
  std::vector<std::string> out;
  for (const auto& m : r.model.layer_mixers) out.push_back(m.type);
  return out;
}

TEST(HybridStack, PatternRepeatsToFillTheStack) {
  Recipe r = load_recipe("", {"model.n_layers=16", "model.pattern=[linear x7, full]"});
  auto types = types_of(r);
  ASSERT_EQ(types.size(), 16u);
  for (int64_t l = 0; l < 16; ++l) EXPECT_EQ(types[l], l % 8 == 7 ? "full" : "linear") << "layer " << l;
  for (int64_t l = 0; l < 16; ++l) EXPECT_EQ(r.model.mixer_for(l).type, types[l]);
}

TEST(HybridStack, NamedMixersKeepTheirOptionsPerLayer) {
  Recipe r = load_recipe("", {"train.seq_len=128", "model.n_layers=4", "model.n_heads=4",
                              "model.mixers.local={type: sliding, window: [8, 16, 24, 32], block: 8}",
                              "model.mixers.everything={type: full}",
                              "model.pattern=[local x3, everything]"});
  EXPECT_EQ(types_of(r), (std::vector<std::string>{"sliding", "sliding", "sliding", "full"}));
  auto cfg = r.model;
  cfg.vocab_size = 32;
  LanguageModel m(cfg);
  auto sparse = [&](int64_t l) {
    return std::dynamic_pointer_cast<SparseAttentionMixerImpl>(m->blocks()[l]->as<BlockImpl>()->mixer());
  };
  for (int64_t l = 0; l < 3; ++l) {
    auto mixer = sparse(l);
    ASSERT_TRUE(mixer) << "layer " << l << " is not the sliding mixer";
    // Per-layer window w: a causal query sees exactly w keys once w tokens exist.
    const auto& layout = mixer->layout_of_head(0, 64);
    EXPECT_EQ(layout.allowed_pairs(), (8 * (l + 1)) * 64 - (8 * (l + 1)) * (8 * (l + 1) - 1) / 2) << "layer " << l;
  }
  EXPECT_FALSE(sparse(3)) << "layer 3 should be full attention";
  auto tokens = torch::randint(0, 32, {2, 128}, torch::kInt64);
  m->forward(tokens).logsumexp(-1).mean().backward();
  for (const auto& p : m->parameters()) ASSERT_TRUE(p.grad().defined());
}

TEST(HybridStack, BadPatternsAreClearErrors) {
  auto has = [](const std::string& e, const std::string& part) { return e.find(part) != std::string::npos; };
  auto e = recipe_error_of({"model.n_layers=4", "model.pattern=[lin x3, full]"});
  EXPECT_TRUE(has(e, "model.pattern") && has(e, "'lin' is neither a name under model.mixers nor a mixer type") &&
              has(e, "linear"))
      << e;
  e = recipe_error_of({"model.n_layers=4", "model.pattern=[linear xq, full]"});
  EXPECT_TRUE(has(e, "'linear xq': expected NAME or NAME xN")) << e;
  e = recipe_error_of({"model.n_layers=4", "model.pattern=[linear x0, full]"});
  EXPECT_TRUE(has(e, "the repeat count must be >= 1")) << e;
  e = recipe_error_of({"model.n_layers=6", "model.pattern=[linear x3, full]"});
  EXPECT_TRUE(has(e, "covers 4 layers, which does not divide model.n_layers 6")) << e;
  e = recipe_error_of({"model.n_layers=2", "model.mixers.a={type: sliding, window: 500}", "model.pattern=[a, full]"});
  EXPECT_TRUE(has(e, "window 500") && has(e, "train.seq_len")) << e;
  e = recipe_error_of({"model.n_layers=2", "model.mixers.a={type: linear, feature_map: nope}", "model.pattern=[a, full]"});
  EXPECT_TRUE(has(e, "model.mixers.a.feature_map")) << e;
}

// Every shipped recipe is valid and trains: two steps of each, shrunk in data
// and batch (never in model or sequence length, which the mixers check).
TEST(ShippedRecipes, EveryRecipeLoadsBuildsAndTrainsTwoSteps) {
  int64_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(LONGTRAIN_SOURCE_DIR) + "/recipes")) {
    if (entry.path().extension() != ".yaml") continue;
    const std::string name = entry.path().stem().string();
    // Recipes on prepared corpora (datasets/, see scripts/get_data.sh) are
    // checked on the synthetic corpus instead.
    std::vector<std::string> data;
    std::ifstream text(entry.path());
    const std::string body((std::istreambuf_iterator<char>(text)), std::istreambuf_iterator<char>());
    if (body.find("source: shards") != std::string::npos) data = {"data.source=synthetic", "data.paths=[]"};
    Recipe probe = load_recipe(entry.path().string(), data);
    if (probe.model.d_model * probe.model.n_layers > 4096 || probe.train.seq_len > 1024) continue;  // paper-size
    ++count;
    const auto dir = fresh_run_dir("recipe_" + name);
    std::vector<std::string> sets = {"run.dir=" + dir, "train.steps=2", "train.batch_size=2", "train.eval_every=0",
                                     "train.eval_docs=2", "train.log_every=1", "train.threads=1",
                                     "data.synthetic.train_docs=40", "data.synthetic.val_docs=4", "checkpoint.every=0"};
    // A staged recipe (doubling shorthand): one step per phase, crossing every boundary.
    if (!probe.curriculum.phases.empty()) sets.push_back("curriculum.doubling.steps=1");
    sets.insert(sets.end(), data.begin(), data.end());
    Recipe r = load_recipe(entry.path().string(), sets);
    TrainOptions opt;
    opt.print_recipe = false;
    TrainResult result;
    ASSERT_NO_THROW(result = train(r, opt)) << name;
    EXPECT_EQ(result.step, probe.curriculum.phases.empty() ? 2 : static_cast<int64_t>(probe.curriculum.phases.size()))
        << name;
    EXPECT_TRUE(std::isfinite(result.after.loss)) << name;
    // bf16 autocast (what CUDA training uses; CPU has it too): the mixers'
    // fp32 reference math must not run in bf16 (a masked score of float
    // lowest overflows it).
    const auto device = result.model->parameters()[0].device();
    auto tokens = torch::randint(0, 200, {2, r.train.seq_len}, torch::TensorOptions(torch::kInt64).device(device));
    torch::Tensor logits;
    {
      AutocastGuard autocast(device, true);
      ASSERT_NO_THROW(logits = result.model->forward(tokens)) << name << " under bf16 autocast";
    }
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>()) << name << " under bf16 autocast";
  }
  EXPECT_GE(count, 9) << "recipes/ lost some recipes";
}

}  // namespace
}  // namespace longtrain
