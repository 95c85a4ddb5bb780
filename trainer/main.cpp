// The `longtrain` command line: train, eval.
//
// Exit codes: 0 success (also a run stopped cleanly by SIGINT/SIGTERM after
// writing its checkpoint), 1 an error (one line on stderr saying why), 2 bad
// command-line usage.
#include <CLI/CLI.hpp>

#include <iostream>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/device.h"
#include "trainer/evaluate.h"
#include "trainer/loop.h"

namespace {

using namespace longtrain;

int run_train(const std::string& recipe_file, const std::vector<std::string>& sets, const std::string& resume,
              int64_t stop_after) {
  Recipe recipe = load_recipe(recipe_file, sets);
  TrainOptions opt;
  opt.resume = resume;
  opt.stop_after = stop_after;
  const TrainResult r = train(recipe, opt);
  if (r.has_before && !r.interrupted) {
    std::cout << "summary: val loss " << r.before.loss << " -> " << r.after.loss << ", bits/byte "
              << r.before.bits_per_byte << " -> " << r.after.bits_per_byte;
    if (r.after.long_range_count) {
      std::cout << ", long-range accuracy " << 100 * r.before.long_range_accuracy << "% -> "
                << 100 * r.after.long_range_accuracy << "% (chance " << 100 * kLongRangeChanceAccuracy << "%)";
    }
    std::cout << std::endl;
  }
  return 0;
}

int run_eval(const std::string& ckpt, const std::vector<std::string>& data, int64_t docs, int64_t seq_len,
             const std::string& json_out) {
  YAML::Node stored = checkpoint_recipe(ckpt);
  if (!data.empty()) {
    stored["data"]["source"] = "text";
    YAML::Node paths(YAML::NodeType::Sequence);
    for (const auto& p : data) paths.push_back(p);
    stored["data"]["paths"] = paths;
  }
  if (docs > 0) stored["train"]["eval_docs"] = docs;
  if (seq_len > 0) stored["train"]["seq_len"] = seq_len;
  Recipe recipe = parse_recipe(stored, ckpt + "/recipe.yaml");
  const torch::Device device = choose_device(recipe.train.device);
  auto tok = make_tokenizer(recipe.data.tokenizer);
  const Corpus corpus = build_corpus(recipe.data, *tok);
  LanguageModel model(recipe.model);
  model->to(device);
  const TrainState state = load_checkpoint(ckpt, *model, nullptr, device);
  EvalOptions eo;
  eo.seq_len = recipe.train.seq_len;
  eo.max_windows = recipe.train.eval_docs;
  eo.batch_size = recipe.train.batch_size;
  eo.device = device;
  eo.bf16 = use_bf16(recipe.train.dtype, device);
  const EvalResult r = evaluate(model, corpus.val, *tok, eo);
  nlohmann::json j = {{"checkpoint", ckpt}, {"step", state.step}, {"data", corpus.description},
                      {"tokens", r.tokens}, {"loss", r.loss}, {"perplexity", r.perplexity},
                      {"bits_per_byte", r.bits_per_byte}};
  std::cout << "evaluation of " << ckpt << " (step " << state.step << ")\n"
            << "  data:          " << corpus.description << "\n"
            << "  tokens scored: " << r.tokens << "\n"
            << "  loss:          " << r.loss << " nats/token (perplexity " << r.perplexity << ")\n"
            << "  bits per byte: " << r.bits_per_byte << "\n";
  if (r.long_range_count) {
    j["long_range"] = {{"count", r.long_range_count}, {"accuracy", r.long_range_accuracy},
                       {"bits", r.long_range_bits}, {"chance_accuracy", kLongRangeChanceAccuracy},
                       {"chance_bits", kLongRangeChanceBits}};
    std::cout << "  long-range:    " << 100 * r.long_range_accuracy << "% accuracy, " << r.long_range_bits
              << " bits/target over " << r.long_range_count << " targets (chance: "
              << 100 * kLongRangeChanceAccuracy << "%, " << kLongRangeChanceBits << " bits)\n";
  }
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error(json_out + ": cannot write");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"longtrain: train and evaluate long-context language models from YAML recipes"};
  app.require_subcommand(1);

  auto* train = app.add_subcommand("train", "Train a model from a recipe");
  std::string recipe_file, resume;
  std::vector<std::string> sets;
  int64_t stop_after = 0;
  train->add_option("recipe", recipe_file, "Recipe YAML file")->required();
  train->add_option("--set", sets, "Override a recipe value: key.path=value (repeatable)");
  train->add_option("--stop-after", stop_after,
                    "Stop after N steps of this invocation, writing a checkpoint (for time-sliced jobs)");
  train->add_option("--resume", resume, "Resume: 'auto' (newest complete checkpoint of the run) or a checkpoint directory");

  auto* eval = app.add_subcommand("eval", "Evaluate a checkpoint on held-out data");
  std::string ckpt, json_out;
  std::vector<std::string> data;
  int64_t docs = 0, seq_len = 0;
  eval->add_option("checkpoint", ckpt, "Checkpoint directory (RUN_DIR/checkpoints/step-N)")->required();
  eval->add_option("--data", data, "Text files or directories to evaluate on instead of the recipe's validation split");
  eval->add_option("--docs", docs, "Number of evaluation windows (default: the recipe's train.eval_docs)");
  eval->add_option("--seq-len", seq_len, "Window length (default: the recipe's train.seq_len)");
  eval->add_option("--json", json_out, "Also write the report as JSON to this file");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    if (*train) return run_train(recipe_file, sets, resume, stop_after);
    return run_eval(ckpt, data, docs, seq_len, json_out);
  } catch (const c10::Error& e) {
    std::cerr << "longtrain: error: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "longtrain: error: " << e.what() << std::endl;
  }
  return 1;
}
