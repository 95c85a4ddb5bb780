// The `longtrain` command line: train, eval, generate, extend, prepare, launch.
//
// Exit codes: 0 success (also a run stopped cleanly by SIGINT/SIGTERM after
// writing its checkpoint), 1 an error (one line on stderr saying why; in a
// data-parallel run it starts with "rank R: "), 2 bad command-line usage.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "data/dataset.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "model/generate.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/device.h"
#include "trainer/eval_tasks.h"
#include "trainer/evaluate.h"
#include "trainer/extend.h"
#include "trainer/launch.h"
#include "trainer/loop.h"
#include "trainer/metrics.h"
#include "trainer/objective.h"

namespace {

using namespace longtrain;

int run_train(const std::string& recipe_file, const std::vector<std::string>& sets, TrainOptions opt) {
  Recipe recipe = load_recipe(recipe_file, sets);
  const TrainResult r = train(recipe, opt);
  if (!r.summary.empty()) std::cout << r.summary << std::endl;
  return 0;
}

// The checkpoint's recipe, evaluating on `data` (text files or directories)
// instead of its own validation split when given.
YAML::Node recipe_for_eval(const std::string& ckpt, const std::vector<std::string>& data) {
  YAML::Node stored = checkpoint_recipe(ckpt);
  if (!data.empty()) {
    stored["data"]["source"] = "text";
    YAML::Node paths(YAML::NodeType::Sequence);
    for (const auto& p : data) paths.push_back(p);
    stored["data"]["paths"] = paths;
  }
  return stored;
}

// A checkpoint made ready to use: its (possibly edited) recipe, the model with
// the checkpoint's weights on the recipe's device, and the tokenizer.
// A fine-tuned checkpoint (recipe section `task`) also brings its task
// objective, which holds the head on `model` and evaluates on the task's eval
// split.
struct LoadedModel {
  Recipe recipe;
  torch::Device device;
  std::unique_ptr<Tokenizer> tok;
  LanguageModel model;
  TrainState state;
  std::unique_ptr<Objective> task;
};

LoadedModel load_model(const std::string& ckpt, const YAML::Node& stored_recipe) {
  YAML::Node stored = YAML::Clone(stored_recipe);
  // The weights are in the checkpoint: the pretrained one it started from is not needed (and may be gone).
  if (stored["task"] && stored["task"].IsMap()) stored["task"].remove("init");
  Recipe recipe = parse_recipe(stored, ckpt + "/recipe.yaml");
  const torch::Device device = choose_device(recipe.train.device);
  auto tok = make_tokenizer(recipe.data.tokenizer);
  LanguageModel model(recipe.model);
  model->to(device);
  std::unique_ptr<Objective> task;
  torch::nn::Module* weights = model.ptr().get();
  if (recipe.task.finetune()) {
    ObjectiveContext ctx;
    ctx.recipe = &recipe;
    ctx.tokenizer = tok.get();
    ctx.device = device;
    ctx.bf16 = use_bf16(recipe.train.dtype, device);
    ctx.seed = static_cast<uint64_t>(recipe.run.seed);
    task = make_objective(ctx);
    task->start_phase(recipe, model, 0, 1);
    weights = &task->module();
  }
  TrainState state = load_checkpoint(ckpt, *weights, nullptr, device);
  return {std::move(recipe), device, std::move(tok), model, state, std::move(task)};
}

// The fine-tuning task names `eval --tasks` takes besides eval_task_names().
bool is_finetune_task(const std::string& name) {
  return name == "classification" || name == "qa" || name == "listops";
}

// Scores a fine-tuned checkpoint on its task's eval split; prints one line.
nlohmann::json run_finetune_eval(LoadedModel& m, const std::string& name) {
  if (!m.task) {
    throw std::invalid_argument("eval task '" + name + "' needs a checkpoint fine-tuned for it (recipe section task, "
                                "README: Fine-tuning); this one is a language model");
  }
  if (m.recipe.task.kind != name) {
    throw std::invalid_argument("eval task '" + name + "': this checkpoint was fine-tuned for '" + m.recipe.task.kind +
                                "'");
  }
  const Evaluation e = m.task->evaluate();
  std::cout << "  " << e.line << std::endl;
  nlohmann::json j = e.record;
  j.erase("task");
  return j;
}

// `eval --tasks`: the long-context suite (trainer/eval_tasks.h) and its report.
int run_eval_tasks_cli(const std::string& ckpt, const std::vector<std::string>& data, EvalTaskOptions opt,
                       const std::string& name, const std::string& out_file) {
  LoadedModel m = load_model(ckpt, recipe_for_eval(ckpt, data));
  auto& [recipe, device, tok, model, state, task] = m;
  std::vector<std::string> lm_tasks, finetune_tasks;
  for (const auto& t : opt.tasks) {
    const auto& names = eval_task_names();
    if (!is_finetune_task(t) && std::find(names.begin(), names.end(), t) == names.end()) {
      std::string valid;
      for (const auto& n : names) valid += n + ", ";
      throw std::invalid_argument("unknown eval task '" + t + "' (valid: " + valid + "classification, qa, listops)");
    }
    (is_finetune_task(t) ? finetune_tasks : lm_tasks).push_back(t);
  }
  opt.tasks = lm_tasks;
  if (opt.lengths.empty()) opt.lengths = {recipe.train.seq_len};
  opt.batch_size = recipe.train.batch_size;
  opt.device = device;
  opt.bf16 = use_bf16(recipe.train.dtype, device);
  std::string mixers;
  for (int64_t l = 0; l < recipe.model.n_layers; ++l) mixers += (l ? "," : "") + recipe.model.mixer_for(l).type;
  std::cout << "evaluation of " << ckpt << " (step " << state.step << ", " << name << ")\n";
  nlohmann::json tasks = nlohmann::json::object();
  std::string data_description = task ? task->description() : "";
  if (!lm_tasks.empty()) {
    const Corpus corpus = build_corpus(recipe.data, *tok);
    tasks = run_eval_tasks(model, corpus.val, *tok, opt, std::cout);
    data_description = corpus.description;
  }
  for (const auto& t : finetune_tasks) tasks[t] = run_finetune_eval(m, t);
  nlohmann::json j = {{"name", name},
                      {"checkpoint", ckpt},
                      {"step", state.step},
                      {"data", data_description},
                      {"model", {{"parameters", model->num_parameters()},
                                 {"layers", mixers},
                                 {"d_model", recipe.model.d_model},
                                 {"n_layers", recipe.model.n_layers},
                                 {"positions", recipe.model.positions},
                                 {"max_positions", recipe.model.max_positions}}},
                      {"device", device.str()},
                      {"tasks", tasks}};
  if (!out_file.empty()) {
    std::ofstream out(out_file);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error(out_file + ": cannot write");
    std::cout << "report: " << out_file << " (charts: python scripts/plot.py " << out_file << ")" << std::endl;
  }
  return 0;
}

int run_generate(const std::string& ckpt, const std::string& prompt, GenerateOptions opt) {
  LoadedModel m = load_model(ckpt, checkpoint_recipe(ckpt));
  auto& tok = m.tok;
  const auto ids = tok->encode(prompt);
  std::vector<int64_t> tokens(ids.begin(), ids.end());
  if (tokens.empty()) tokens.push_back(tok->eos());  // an empty prompt starts a new document
  opt.stop_token = tok->eos();
  const GenerateResult r = generate(m.model, tokens, opt);
  if (opt.use_cache && !r.used_cache) {
    std::cerr << "longtrain: note: recomputing the full forward for every token (" << r.fallback << ")" << std::endl;
  }
  std::vector<int32_t> out;
  for (int64_t t : r.tokens) {
    if (t != tok->eos()) out.push_back(static_cast<int32_t>(t));
  }
  std::cout << prompt << tok->decode(out) << std::endl;
  return 0;
}

int run_eval(const std::string& ckpt, const std::vector<std::string>& data, int64_t docs, int64_t seq_len,
             const std::string& json_out) {
  YAML::Node stored = recipe_for_eval(ckpt, data);
  if (docs > 0) stored["train"]["eval_docs"] = docs;
  if (seq_len > 0) stored["train"]["seq_len"] = seq_len;
  LoadedModel m = load_model(ckpt, stored);
  if (m.task) {
    // A fine-tuned checkpoint: its task's own evaluation.
    std::cout << "evaluation of " << ckpt << " (step " << m.state.step << ")\n"
              << "  data: " << m.task->description() << "\n";
    nlohmann::json j = {{"checkpoint", ckpt}, {"step", m.state.step}, {"data", m.task->description()}};
    j[m.recipe.task.kind] = run_finetune_eval(m, m.recipe.task.kind);
    if (!json_out.empty()) {
      std::ofstream out(json_out);
      out << j.dump(2) << "\n";
      if (!out) throw std::runtime_error(json_out + ": cannot write");
    }
    return 0;
  }
  auto& [recipe, device, tok, model, state, task] = m;
  const Corpus corpus = build_corpus(recipe.data, *tok);
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

int run_extend(const std::string& ckpt, int64_t positions, std::string out) {
  if (out.empty()) {
    std::string base = ckpt;
    while (!base.empty() && base.back() == '/') base.pop_back();
    out = base + "-ext" + std::to_string(positions);
  }
  const std::string written = extend_checkpoint(ckpt, positions, out);
  std::cout << "extended " << ckpt << " to " << positions << " positions: " << written << "\n"
            << "evaluate with: longtrain eval " << written << " --seq-len " << positions << "\n"
            << "train from it with: longtrain train RECIPE --init " << written << std::endl;
  return 0;
}

int run_prepare(const PrepareOptions& options) {
  const PrepareResult r = prepare(options);
  const ShardMeta& m = r.meta;
  std::cout << "prepared " << options.out_dir << " in " << format_duration(r.seconds) << " from "
            << m.input_files << " files: tokenizer " << m.made_with << " (vocab " << m.vocab_size << ", "
            << m.token_width << "-byte tokens)\n"
            << "  train: " << m.train.shards.size() << " shards, " << m.train.documents << " documents, "
            << m.train.tokens << " tokens\n"
            << "  val:   " << m.val.shards.size() << " shards, " << m.val.documents << " documents, "
            << m.val.tokens << " tokens\n"
            << "train on it with: --set data.source=shards --set 'data.paths=[" << options.out_dir << "]'"
            << std::endl;
  return 0;
}

// "rank R: " inside a data-parallel run (WORLD_SIZE > 1), else "".
std::string rank_prefix() {
  const char* world = std::getenv("WORLD_SIZE");
  const char* rank = std::getenv("RANK");
  if (world == nullptr || std::atoi(world) <= 1) return "";
  return std::string("rank ") + (rank ? rank : "?") + ": ";
}

// Reports an error and exits. A data-parallel rank leaves at once: its process
// group may hold threads blocked on dead peers, which must not delay the exit.
[[noreturn]] void fail(const std::string& message) {
  const std::string prefix = rank_prefix();
  std::cerr << "longtrain: error: " << prefix << message << std::endl;
  if (!prefix.empty()) {
    std::fflush(nullptr);
    std::_Exit(1);
  }
  std::exit(1);
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
  std::string init;
  train->add_option("--init", init,
                    "Start a fresh run from this checkpoint's weights (a longer position table is filled by copying)");
  TrainOptions profile_opts;
  train->add_option("--profile", profile_opts.profile_dir,
                    "Profile steps of this run with Kineto: DIR/trace.json and DIR/summary.{json,txt} "
                    "(where the step's time goes)");
  train->add_option("--profile-steps", profile_opts.profile_steps, "Steps to record (default 3)")
      ->check(CLI::PositiveNumber);
  train->add_option("--profile-warmup", profile_opts.profile_warmup,
                    "Steps of this invocation before recording (default 5)")
      ->check(CLI::NonNegativeNumber);

  auto* ext = app.add_subcommand("extend", "Extend a checkpoint's positions for longer sequences");
  std::string ext_ckpt, ext_out;
  int64_t ext_positions = 0;
  ext->add_option("checkpoint", ext_ckpt, "Checkpoint directory")->required();
  ext->add_option("--positions", ext_positions, "New number of positions (longer than the model's)")->required();
  ext->add_option("--out", ext_out, "Run directory for the extended checkpoint (default: CHECKPOINT-extN)");

  auto* eval = app.add_subcommand("eval", "Evaluate a checkpoint on held-out data");
  std::string ckpt, json_out;
  std::vector<std::string> data;
  int64_t docs = 0, seq_len = 0;
  eval->add_option("checkpoint", ckpt, "Checkpoint directory (RUN_DIR/checkpoints/step-N)")->required();
  eval->add_option("--data", data, "Text files or directories to evaluate on instead of the recipe's validation split");
  eval->add_option("--docs", docs, "Number of evaluation windows (default: the recipe's train.eval_docs)");
  eval->add_option("--seq-len", seq_len, "Window length (default: the recipe's train.seq_len)");
  eval->add_option("--json", json_out, "Also write the report as JSON to this file");
  EvalTaskOptions task_opt;
  std::string tasks_arg, eval_name, eval_out;
  eval->add_option("--tasks", tasks_arg,
                   "Run the long-context suite instead: comma-separated lm,passkey,mqar (README: Evaluation), or a "
                   "fine-tuned checkpoint's task: classification, qa or listops (README: Fine-tuning)");
  eval->add_option("--lengths", task_opt.lengths, "Window / item lengths for --tasks (default: train.seq_len)")
      ->delimiter(',');
  eval->add_option("--stride", task_opt.stride, "lm: window stride (default: length / 2)");
  eval->add_option("--max-windows", task_opt.max_windows, "lm: windows per length")->capture_default_str();
  eval->add_option("--buckets", task_opt.buckets, "lm: loss-by-position buckets")->capture_default_str();
  eval->add_option("--depths", task_opt.depths, "passkey: depths in [0, 1]")->delimiter(',')->capture_default_str();
  eval->add_option("--pairs", task_opt.pairs, "mqar: numbers of key-value pairs")->delimiter(',')->capture_default_str();
  eval->add_option("--samples", task_opt.samples, "passkey/mqar: items per grid cell")->capture_default_str();
  eval->add_option("--seed", task_opt.seed, "passkey/mqar: item seed")->capture_default_str();
  eval->add_option("--name", eval_name, "Model name in the report (default: the checkpoint path)");
  eval->add_option("--out", eval_out, "Write the --tasks report as JSON to this file");

  auto* gen = app.add_subcommand("generate", "Continue a prompt with a trained model");
  std::string gen_ckpt, gen_prompt;
  GenerateOptions gen_opt;
  bool no_cache = false;
  gen->add_option("checkpoint", gen_ckpt, "Checkpoint directory")->required();
  gen->add_option("--prompt", gen_prompt, "Text to continue (empty: start a new document)");
  gen->add_option("--max-new-tokens", gen_opt.max_new_tokens, "Tokens to generate")->capture_default_str();
  gen->add_option("--temperature", gen_opt.sampling.temperature, "0: greedy")->capture_default_str();
  gen->add_option("--top-k", gen_opt.sampling.top_k, "Sample from the k most likely tokens (0: all)")
      ->capture_default_str();
  gen->add_option("--top-p", gen_opt.sampling.top_p, "Nucleus sampling mass (1: all)")->capture_default_str();
  gen->add_option("--seed", gen_opt.sampling.seed, "Sampling seed")->capture_default_str();
  gen->add_flag("--no-cache", no_cache, "Recompute the full forward for every token (the reference path)");

  auto* prep = app.add_subcommand("prepare", "Tokenize text files, directories or JSONL into token shards");
  PrepareOptions po;
  po.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  prep->add_option("inputs", po.inputs,
                   "Text files (one document each), directories (read recursively) or .jsonl files "
                   "(one JSON object per line, the document in \"text\")")
      ->required();
  prep->add_option("--out", po.out_dir, "Output directory for the shards, meta.json and tokenizer.model")
      ->required();
  prep->add_option("--tokenizer", po.tokenizer,
                   "bytes | spm:MODEL (an existing SentencePiece model) | train-spm:VOCAB (train one on the "
                   "train split)")
      ->capture_default_str();
  prep->add_option("--spm-type", po.spm_type, "Model type for train-spm")
      ->check(CLI::IsMember({"bpe", "unigram"}))
      ->capture_default_str();
  prep->add_option("--val-fraction", po.val_fraction,
                   "Share held out for validation: of the documents, or the tail of a single document")
      ->capture_default_str();
  prep->add_option("--shard-tokens", po.shard_tokens, "Tokens per shard (a longer document gets its own)")
      ->capture_default_str();
  prep->add_option("--threads", po.threads, "Tokenizer threads (the output does not depend on it)")
      ->capture_default_str();

  auto* launch_cmd = app.add_subcommand(
      "launch",
      "Run a command on N processes (one per GPU) with torchrun's environment: "
      "longtrain launch --nproc N [--nnodes M --node-rank R --master ADDR:PORT] -- train RECIPE ...");
  LaunchOptions lo;
  launch_cmd->add_option("--nproc", lo.nproc, "Processes on this node (one per GPU)")->required();
  launch_cmd->add_option("--nnodes", lo.nnodes, "Number of nodes")->capture_default_str();
  launch_cmd->add_option("--node-rank", lo.node_rank, "This node's index in [0, nnodes)")->capture_default_str();
  launch_cmd->add_option("--master", lo.master,
                         "ADDR:PORT of rank 0's rendezvous (default on one node: 127.0.0.1 and a free port)");
  launch_cmd->add_option("--grace-s", lo.grace_s,
                         "Seconds the other ranks get to exit after one fails, before they are killed")
      ->capture_default_str();
  launch_cmd->add_option("command", lo.command, "The longtrain command each rank runs, after --")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    if (*train) {
      if (!init.empty() && !resume.empty()) {
        std::cerr << "longtrain: error: --init starts a fresh run; it cannot be combined with --resume" << std::endl;
        return 2;
      }
      TrainOptions opt = profile_opts;
      opt.resume = resume;
      opt.stop_after = stop_after;
      opt.init = init;
      return run_train(recipe_file, sets, opt);
    }
    if (*ext) return run_extend(ext_ckpt, ext_positions, ext_out);
    if (*launch_cmd) return launch(lo);
    if (*prep) return run_prepare(po);
    if (*gen) {
      gen_opt.use_cache = !no_cache;
      return run_generate(gen_ckpt, gen_prompt, gen_opt);
    }
    if (!tasks_arg.empty()) {
      std::stringstream list(tasks_arg);
      for (std::string t; std::getline(list, t, ',');) {
        if (!t.empty()) task_opt.tasks.push_back(t);
      }
      return run_eval_tasks_cli(ckpt, data, task_opt, eval_name.empty() ? ckpt : eval_name, eval_out);
    }
    if (!eval_out.empty()) {
      std::cerr << "longtrain: error: --out is the --tasks report; use --json for the plain evaluation" << std::endl;
      return 2;
    }
    return run_eval(ckpt, data, docs, seq_len, json_out);
  } catch (const std::invalid_argument& e) {
    if (*launch_cmd) {
      std::cerr << "longtrain launch: error: " << e.what() << std::endl;
      return 2;
    }
    fail(e.what());
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 1;
}
