// A tiny recipe for trainer tests: small enough that a run takes about a second.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/recipe_section.h"

namespace longtrain {

inline std::string fresh_run_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("longtrain_test_" + name);
  remove_tree(dir.string());
  return dir.string();
}

inline std::vector<std::string> tiny_overrides(const std::string& run_dir) {
  return {"run.dir=" + run_dir, "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
          "model.max_positions=64", "data.synthetic.train_docs=200", "data.synthetic.val_docs=8",
          "data.synthetic.facts=3", "data.synthetic.recalls=3", "data.synthetic.filler=1",
          "train.batch_size=4", "train.seq_len=64", "train.steps=12", "train.warmup=2", "train.lr=3e-3",
          "train.log_every=1", "train.eval_every=0", "train.eval_docs=4", "train.threads=1",
          "checkpoint.every=4", "checkpoint.keep_last=5"};
}

inline Recipe tiny_recipe(const std::string& run_dir, std::vector<std::string> extra = {}) {
  auto o = tiny_overrides(run_dir);
  o.insert(o.end(), extra.begin(), extra.end());
  return load_recipe("", o);
}

// The RecipeError message loading (file, sets) raises, or "" if it loads.
inline std::string recipe_error_of(const std::vector<std::string>& sets, const std::string& file = "") {
  try {
    load_recipe(file, sets);
  } catch (const RecipeError& e) {
    return e.what();
  }
  return "";
}

// The step records of a run's metrics.jsonl (evaluations left out).
inline std::vector<nlohmann::json> step_records(const std::string& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("eval")) out.push_back(j);
  }
  return out;
}

inline std::vector<double> logged_losses(const std::string& run_dir) {
  std::vector<double> out;
  for (const auto& j : step_records(run_dir)) out.push_back(j["loss"].get<double>());
  return out;
}

}  // namespace longtrain
