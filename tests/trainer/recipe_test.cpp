// Recipe validation: unknown keys, wrong types and bad values each produce the
// expected message (file:line, key, valid keys); --set overrides; the resolved
// recipe round-trips.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/trainer/test_recipes.h"
#include "trainer/config.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

std::string write_recipe(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("longtrain_recipe_" + name + ".yaml");
  std::ofstream(path) << text;
  return path.string();
}

std::string error_of(const std::string& file, const std::vector<std::string>& sets = {}) {
  return recipe_error_of(sets, file);
}

TEST(Recipe, DefaultsWhenEmpty) {
  Recipe r = load_recipe("");
  EXPECT_EQ(r.model.d_model, 128);
  EXPECT_EQ(r.model.mixer.type, "full");
  EXPECT_EQ(r.train.schedule, "cosine");
}

TEST(Recipe, UnknownKeyNamesFileLineAndValidKeys) {
  const auto f = write_recipe("unknown", "model:\n  d_model: 64\n  n_layerz: 3\n");
  const std::string msg = error_of(f);
  EXPECT_NE(msg.find(f + ":3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key 'n_layerz' in 'model'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("valid keys:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("n_layers"), std::string::npos) << msg;
}

TEST(Recipe, UnknownTopLevelSection) {
  const auto f = write_recipe("top", "trian:\n  steps: 3\n");
  const std::string msg = error_of(f);
  EXPECT_NE(msg.find(f + ":1: unknown key 'trian' in 'recipe'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train"), std::string::npos) << msg;
}

TEST(Recipe, WrongTypeNamesExpectedType) {
  const auto f = write_recipe("type", "train:\n  steps: many\n");
  const std::string msg = error_of(f);
  EXPECT_NE(msg.find(f + ":2: train.steps: expected an integer, got 'many'"), std::string::npos) << msg;
}

TEST(Recipe, ImpossibleValuesRejected) {
  EXPECT_NE(error_of(write_recipe("heads", "model:\n  d_model: 100\n  n_heads: 3\n")).find("not divisible"),
            std::string::npos);
  EXPECT_NE(error_of(write_recipe("lr", "train:\n  lr: -1\n")).find("train.lr: must be > 0"), std::string::npos);
  const std::string pos = error_of(write_recipe("pos", "model:\n  max_positions: 64\ntrain:\n  seq_len: 128\n"));
  EXPECT_NE(pos.find("exceeds model.max_positions = 64"), std::string::npos) << pos;
  const std::string choice = error_of(write_recipe("sched", "train:\n  schedule: linear\n"));
  EXPECT_NE(choice.find("'linear' is not one of: cosine, constant"), std::string::npos) << choice;
}

TEST(Recipe, UnknownMixerListsKnownOnes) {
  const std::string msg = error_of(write_recipe("mixer", "model:\n  mixer:\n    type: nope\n"));
  EXPECT_NE(msg.find("unknown mixer 'nope'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("full"), std::string::npos) << msg;
}

TEST(Recipe, UnknownMixerOptionRejected) {
  const std::string msg = error_of(write_recipe("mixopt", "model:\n  mixer:\n    type: full\n    window: 3\n"));
  EXPECT_NE(msg.find("unknown key 'window' in 'model.mixer'"), std::string::npos) << msg;
}

TEST(Recipe, SetOverridesYaml) {
  const auto f = write_recipe("set", "model:\n  d_model: 64\ntrain:\n  steps: 5\n");
  Recipe r = load_recipe(f, {"model.d_model=32", "train.lr=0.01", "data.synthetic.facts=3"});
  EXPECT_EQ(r.model.d_model, 32);
  EXPECT_DOUBLE_EQ(r.train.lr, 0.01);
  EXPECT_EQ(r.train.steps, 5);
  EXPECT_EQ(r.data.synthetic.facts, 3);
}

TEST(Recipe, BadSetIsNamedAsSuch) {
  const std::string typo = error_of("", {"model.dmodel=3"});
  EXPECT_NE(typo.find("--set unknown key 'dmodel' in 'model'"), std::string::npos) << typo;
  const std::string type = error_of("", {"train.steps=abc"});
  EXPECT_NE(type.find("--set train.steps: expected an integer"), std::string::npos) << type;
  EXPECT_NE(error_of("", {"novalue"}).find("expected key.path=value"), std::string::npos);
}

TEST(Recipe, ResolvedRoundTrips) {
  const auto f = write_recipe("rt", "model:\n  d_model: 64\n  norm: rmsnorm\ntrain:\n  steps: 7\n");
  Recipe a = load_recipe(f);
  const std::string text = recipe_to_string(a);
  EXPECT_NE(text.find("d_model: 64"), std::string::npos);
  EXPECT_NE(text.find("warmup:"), std::string::npos) << "defaults must be in the resolved recipe";
  Recipe b = parse_recipe(YAML::Load(text), "resolved");
  EXPECT_EQ(recipe_to_string(b), text);
  EXPECT_EQ(b.model.norm, "rmsnorm");
  EXPECT_EQ(b.train.steps, 7);
}

TEST(Recipe, MissingFileAndBadYaml) {
  EXPECT_NE(error_of("/nonexistent/recipe.yaml").find("no such recipe file"), std::string::npos);
  const auto f = write_recipe("badyaml", "model:\n  d_model: [1, 2\n");
  EXPECT_NE(error_of(f).find("invalid YAML"), std::string::npos);
}

}  // namespace
}  // namespace longtrain
