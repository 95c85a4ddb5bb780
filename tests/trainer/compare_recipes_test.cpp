// recipes/compare/: the six models of the long-context comparison load, build,
// run a forward, have the same size (within 1%: AFT and the hybrid differ
// only by buffers and a few biases), and share every setting but the mixer,
// so the comparison measures the mixer and nothing else.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "model/lm.h"
#include "tests/trainer/test_recipes.h"

namespace longtrain {
namespace {

// The resolved recipe without what may differ between the families.
std::string shared_settings(const Recipe& r) {
  YAML::Node n = YAML::Clone(r.resolved);
  n["model"].remove("mixer");
  n["model"].remove("mixers");
  n["model"].remove("pattern");
  n["run"].remove("dir");
  std::ostringstream os;
  os << n;
  return os.str();
}

TEST(CompareRecipes, EqualSizeAndSettingsOnlyTheMixerDiffers) {
  const std::string dir = std::string(LONGTRAIN_SOURCE_DIR) + "/recipes/compare/";
  std::string reference;
  int64_t ref_params = 0;
  for (const std::string name : {"full", "sliding", "bigbird", "linear", "aft", "hybrid"}) {
    SCOPED_TRACE(name);
    Recipe r = load_recipe(dir + name + ".yaml");
    auto cfg = r.model;
    cfg.vocab_size = 258;
    LanguageModel m(cfg);
    const int64_t params = m->num_parameters();
    if (reference.empty()) {
      reference = shared_settings(r);
      ref_params = params;
    }
    EXPECT_EQ(shared_settings(r), reference);
    EXPECT_NEAR(static_cast<double>(params), static_cast<double>(ref_params), 0.01 * ref_params);
    torch::NoGradGuard no_grad;
    auto logits = m->forward(torch::randint(0, 258, {1, r.train.seq_len}, torch::kInt64));
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  }
}

// A checkpoint stores the resolved recipe, and eval / generate / resume parse
// it again: that must succeed for every shipped recipe (a mixer that writes a
// default for a key that does not apply would fail its own check here).
TEST(CompareRecipes, EveryResolvedRecipeParsesAgain) {
  int count = 0;
  for (const std::string sub : {"/recipes", "/recipes/compare"}) {
    for (const auto& entry : std::filesystem::directory_iterator(std::string(LONGTRAIN_SOURCE_DIR) + sub)) {
      if (entry.path().extension() != ".yaml") continue;
      SCOPED_TRACE(entry.path().string());
      // Recipes on prepared corpora are checked on the synthetic one (as in hybrid_test.cpp).
      std::ifstream text(entry.path());
      const std::string body((std::istreambuf_iterator<char>(text)), std::istreambuf_iterator<char>());
      std::vector<std::string> data;
      if (body.find("source: shards") != std::string::npos) data = {"data.source=synthetic", "data.paths=[]"};
      Recipe r = load_recipe(entry.path().string(), data);
      EXPECT_NO_THROW(parse_recipe(YAML::Clone(r.resolved), "resolved"));
      ++count;
    }
  }
  EXPECT_GE(count, 16);
}

}  // namespace
}  // namespace longtrain
