// Fine-tuning through the normal trainer (recipe section `task`): the real
// binary learns the toy topic set and a trivial QA span and evaluates the
// checkpoint with `eval --tasks`; ListOps trains from the generator; a causal
// sliding-window body pools its last token as a global one; SIGTERM leaves an
// evaluable checkpoint; a fine-tune resumed mid-way equals the uninterrupted
// run; task.init starts the body from a pretrained LM; malformed task sections
// fail at file:line.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "data/rng.h"
#include "tests/trainer/cli_run.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/loop.h"

namespace longtrain {
namespace fs = std::filesystem;
using nlohmann::json;
namespace {

const std::string kSource = LONGTRAIN_SOURCE_DIR;

// The eval records of a run's metrics.jsonl.
std::vector<json> eval_records(const std::string& run_dir) {
  std::vector<json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (j.contains("eval")) out.push_back(j);
  }
  return out;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// A small encoder on the toy topic set, as `--set`s for the CLI or load_recipe.
std::vector<std::string> topic_sets(const std::string& dir) {
  return {"run.dir=" + dir,
          "model.d_model=32",
          "model.n_layers=2",
          "model.n_heads=2",
          "model.max_positions=64",
          "model.causal=false",
          "task.kind=classification",
          "task.train=" + kSource + "/recipes/finetune/data/topics_train.jsonl",
          "task.eval=" + kSource + "/recipes/finetune/data/topics_eval.jsonl",
          "train.seq_len=64",
          "train.batch_size=4",
          "train.steps=16",
          "train.warmup=2",
          "train.lr=3e-3",
          "train.log_every=1",
          "train.eval_every=0",
          "train.threads=1",
          "checkpoint.every=4",
          "checkpoint.keep_last=5"};
}

TEST(Finetune, ClassificationThroughTrainLearnsTheToySet) {
  const auto dir = fresh_run_dir("ft_topics");
  CliRun t = run_cli("train " + kSource + "/recipes/finetune/topics-tiny.yaml" +
                     set_args({"run.dir=" + dir, "task.train=" + kSource + "/recipes/finetune/data/topics_train.jsonl",
                               "task.eval=" + kSource + "/recipes/finetune/data/topics_eval.jsonl",
                               "train.threads=1"}));
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("summary: classification loss"), std::string::npos) << t.out;
  const auto evals = eval_records(dir);
  ASSERT_GE(evals.size(), 2u);
  EXPECT_EQ(evals.back()["task"], "classification");
  EXPECT_EQ(evals.back()["val_examples"], 24);
  EXPECT_GE(evals.back()["val_accuracy"].get<double>(), 0.95) << evals.back();
  // The checkpoint holds the head: eval loads it and scores the same.
  const auto ckpt = dir + "/checkpoints/step-00000060";
  CliRun e = run_cli("eval " + ckpt + " --tasks classification --out " + dir + "/report.json");
  ASSERT_EQ(e.code, 0) << e.out;
  const json report = read_json(dir + "/report.json");
  EXPECT_DOUBLE_EQ(report["tasks"]["classification"]["val_accuracy"].get<double>(),
                   evals.back()["val_accuracy"].get<double>());
  CliRun plain = run_cli("eval " + ckpt);
  ASSERT_EQ(plain.code, 0) << plain.out;
  EXPECT_NE(plain.out.find("accuracy"), std::string::npos) << plain.out;
  // A task the checkpoint was not fine-tuned for is an error that says so.
  CliRun wrong = run_cli("eval " + ckpt + " --tasks listops");
  EXPECT_EQ(wrong.code, 1);
  EXPECT_NE(wrong.out.find("fine-tuned for 'classification'"), std::string::npos) << wrong.out;
}

// Contexts of lowercase filler words holding one two-letter uppercase code,
// the answer: [eos] question [eos] context, answer span = the code.
void write_qa_toy(const std::string& path, int n, uint64_t seed) {
  const char* words[] = {"ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"};
  Rng rng(seed);
  std::ofstream out(path);
  for (int i = 0; i < n; ++i) {
    std::string context;
    const int len = 6 + static_cast<int>(rng.below(6)), at = static_cast<int>(rng.below(static_cast<uint64_t>(len)));
    std::string code;
    for (int k = 0; k < 2; ++k) code += static_cast<char>('A' + rng.below(26));
    for (int w = 0; w < len; ++w) {
      if (w == at) context += code + " ";
      context += std::string(words[rng.below(8)]) + " ";
    }
    out << json{{"question", "code?"}, {"context", context}, {"answer", code}}.dump() << "\n";
  }
}

TEST(Finetune, QaThroughTrainLearnsATrivialSpan) {
  const auto dir = fresh_run_dir("ft_qa");
  fs::create_directories(dir);
  write_qa_toy(dir + "/train.jsonl", 256, 1);
  write_qa_toy(dir + "/eval.jsonl", 48, 2);
  std::ofstream(dir + "/qa.yaml") << "model: {d_model: 32, n_layers: 2, n_heads: 2, max_positions: 64, causal: false}\n"
                                     "task:\n  kind: qa\n  train: " + dir + "/train.jsonl\n  eval: " + dir +
                                         "/eval.jsonl\n  max_answer_len: 4\n"
                                     "train: {seq_len: 64, batch_size: 16, steps: 150, warmup: 10, lr: 3.0e-3, "
                                     "eval_every: 0, log_every: 50, threads: 1}\n"
                                     "checkpoint: {every: 0}\n";
  CliRun t = run_cli("train " + dir + "/qa.yaml --set run.dir=" + dir);
  ASSERT_EQ(t.code, 0) << t.out;
  const auto evals = eval_records(dir);
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_LT(evals.front()["val_exact_match"].get<double>(), 0.2);
  EXPECT_GE(evals.back()["val_exact_match"].get<double>(), 0.9) << evals.back();
  EXPECT_GE(evals.back()["val_f1"].get<double>(), evals.back()["val_exact_match"].get<double>());
  CliRun e = run_cli("eval " + dir + "/checkpoints/step-00000150 --tasks qa --out " + dir + "/report.json");
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_DOUBLE_EQ(read_json(dir + "/report.json")["tasks"]["qa"]["val_f1"].get<double>(),
                   evals.back()["val_f1"].get<double>());
}

TEST(Finetune, ListopsTrainsFromTheGeneratorAndEvaluates) {
  const auto dir = fresh_run_dir("ft_listops");
  CliRun t = run_cli("train " + kSource + "/recipes/finetune/listops-tiny.yaml" +
                     set_args({"run.dir=" + dir, "model.d_model=32", "model.max_positions=48", "train.seq_len=48",
                               "train.steps=6", "train.warmup=1", "train.eval_every=3", "train.log_every=1",
                               "train.threads=1", "task.listops.eval_items=20", "checkpoint.every=0"}));
  ASSERT_EQ(t.code, 0) << t.out;
  const auto evals = eval_records(dir);
  ASSERT_EQ(evals.size(), 3u);  // before, at step 3, after
  EXPECT_EQ(evals[1]["step"], 3);
  EXPECT_EQ(evals.back()["val_examples"], 20);
  CliRun e = run_cli("eval " + dir + "/checkpoints/step-00000006 --tasks listops --out " + dir + "/report.json");
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_DOUBLE_EQ(read_json(dir + "/report.json")["tasks"]["listops"]["val_loss"].get<double>(),
                   evals.back()["val_loss"].get<double>());
}

TEST(Finetune, ResumeMidFinetuneIsBitExact) {
  TrainOptions opt;
  opt.print_recipe = false;
  // 48 examples in batches of 4: the 16 steps cross an epoch boundary.
  const auto straight = fresh_run_dir("ft_straight");
  TrainResult a = train(load_recipe("", topic_sets(straight)), opt);
  const auto split = fresh_run_dir("ft_split");
  TrainOptions first = opt;
  first.stop_after = 5;
  TrainResult part = train(load_recipe("", topic_sets(split)), first);
  ASSERT_TRUE(part.interrupted);
  TrainOptions second = opt;
  second.resume = "auto";
  TrainResult b = train(load_recipe("", topic_sets(split)), second);
  EXPECT_EQ(b.step, 16);
  const auto la = logged_losses(straight), lb = logged_losses(split);
  ASSERT_EQ(la.size(), 16u);
  ASSERT_EQ(lb.size(), 16u);
  for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "step " << i + 1;
  // The head too: the final evaluations agree exactly.
  EXPECT_EQ(a.task_after.loss, b.task_after.loss);
  EXPECT_EQ(a.task_after.accuracy, b.task_after.accuracy);
  auto pa = a.model->named_parameters(), pb = b.model->named_parameters();
  for (const auto& item : pa) EXPECT_TRUE(item.value().equal(pb[item.key()])) << item.key();
}

TEST(Finetune, CausalSlidingBodyPoolsTheLastTokenAsGlobal) {
  // A causal body pools each row's last real token; with global_attention:
  // auto that token is global, so a window of 8 does not limit what it sees.
  TrainOptions opt;
  opt.print_recipe = false;
  auto sets = topic_sets(fresh_run_dir("ft_causal"));
  for (const char* s : {"model.causal=true", "model.mixer={type: sliding, window: 8, block: 8, global_first: 1}",
                        "train.steps=40", "checkpoint.every=0"}) {
    sets.push_back(s);
  }
  TrainResult r = train(load_recipe("", sets), opt);
  EXPECT_EQ(r.task_after.examples, 24);
  EXPECT_GE(r.task_after.accuracy, 0.95) << "loss " << r.task_after.loss;
}

TEST(Finetune, SigtermLeavesAnEvaluableCheckpoint) {
  const auto dir = fresh_run_dir("ft_sigterm");
  std::vector<std::string> argv_s = {LONGTRAIN_BINARY, "train", kSource + "/recipes/finetune/listops-tiny.yaml"};
  for (const auto& s : {"run.dir=" + dir, std::string("model.d_model=32"), std::string("train.seq_len=48"),
                        std::string("model.max_positions=48"), std::string("train.steps=100000"),
                        std::string("train.log_every=1"), std::string("train.threads=1"),
                        std::string("task.listops.eval_items=8"), std::string("checkpoint.every=0")}) {
    argv_s.push_back("--set");
    argv_s.push_back(s);
  }
  const pid_t pid = spawn_quiet(argv_s);
  ASSERT_GE(pid, 0);
  for (int i = 0; i < 600 && step_records(dir).size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const int status = terminate_and_wait(pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto ckpts = list_checkpoints(dir);
  ASSERT_EQ(ckpts.size(), 1u);
  CliRun e = run_cli("eval " + ckpts[0] + " --tasks listops");
  EXPECT_EQ(e.code, 0) << e.out;
  EXPECT_NE(e.out.find("listops loss"), std::string::npos) << e.out;
}

TEST(Finetune, InitLoadsThePretrainedBody) {
  TrainOptions opt;
  opt.print_recipe = false;
  const auto lm_dir = fresh_run_dir("ft_pretrain");
  train(tiny_recipe(lm_dir, {"train.steps=4"}), opt);
  const std::string ckpt = lm_dir + "/checkpoints/step-00000004";
  Recipe lm = tiny_recipe(lm_dir);
  lm.model.vocab_size = 258;
  LanguageModel pretrained(lm.model);
  load_checkpoint(ckpt, *pretrained, nullptr, torch::kCPU);

  // One step at a negligible learning rate: the body is the pretrained one.
  auto sets = topic_sets(fresh_run_dir("ft_init"));
  for (const char* s : {"train.steps=1", "train.lr=1e-12", "train.min_lr=0", "train.warmup=0"}) sets.push_back(s);
  sets.push_back("task.init=" + ckpt);
  TrainResult r = train(load_recipe("", sets), opt);
  auto want = pretrained->named_parameters();
  for (const auto& item : r.model->named_parameters()) {
    EXPECT_TRUE(torch::allclose(item.value(), want[item.key()], 0, 1e-6)) << item.key();
  }
  // Without init the body is a fresh one.
  sets.pop_back();
  sets[0] = "run.dir=" + fresh_run_dir("ft_no_init");
  TrainResult fresh = train(load_recipe("", sets), opt);
  EXPECT_FALSE(torch::allclose(fresh.model->named_parameters()["tok_emb.weight"], want["tok_emb.weight"], 0, 1e-6));
}

TEST(Finetune, MalformedTaskSectionsFailAtFileAndLine) {
  const auto f = (fs::temp_directory_path() / "longtrain_ft_bad.yaml").string();
  auto error_of = [&](const std::string& yaml) {
    std::ofstream(f) << yaml;
    return recipe_error_of({}, f);
  };
  EXPECT_EQ(error_of("task:\n  kind: clasification\n"),
            f + ":2: task.kind: 'clasification' is not one of: lm, classification, qa, listops");
  const std::string unknown = error_of("task:\n  kind: listops\n  listops:\n    depth: 3\n");
  EXPECT_EQ(unknown.rfind(f + ":4: unknown key 'depth' in 'task.listops' (valid keys: eval_items, max_args, "
                          "max_depth, seed, train_items)", 0), 0u) << unknown;
  const std::string top = error_of("task:\n  kind: listops\n  labels: 3\n");
  EXPECT_NE(top.find(f + ":3: unknown key 'labels' in 'task' (valid keys: "), std::string::npos) << top;
  EXPECT_NE(top.find("global_attention"), std::string::npos) << top;
  EXPECT_EQ(error_of("task:\n  kind: listops\n  train: a.jsonl\n"),
            f + ":3: task.train: applies only to kind classification, qa (kind is 'listops')");
  EXPECT_EQ(error_of("task:\n  kind: classification\n  train: /nonexistent/a.jsonl\n  eval: /nonexistent/b.jsonl\n"),
            f + ":3: task.train: '/nonexistent/a.jsonl': no such file");
  EXPECT_EQ(error_of("task:\n  kind: qa\n"), f + ":2: task.train: kind qa needs a JSONL file here");
  EXPECT_EQ(error_of("task:\n  kind: listops\n  global_attention: always\n"),
            f + ":3: task.global_attention: 'always' is not one of: auto, none");
  EXPECT_EQ(error_of("task:\n  kind: listops\n  listops:\n    max_args: 1\n"),
            f + ":4: task.listops.max_args: must be >= 2");
  const std::string staged = error_of(
      "task:\n  kind: listops\ncurriculum:\n  phases:\n    - {steps: 2, seq_len: 64}\n    - {steps: 2, seq_len: 128}\n");
  EXPECT_NE(staged.find("task.kind: fine-tuning runs one phase"), std::string::npos) << staged;
  // A language-model recipe may say so, and nothing else.
  EXPECT_EQ(error_of("task:\n  kind: lm\n"), "");
  EXPECT_EQ(error_of("task:\n  kind: lm\n  init: x\n"),
            f + ":3: task.init: applies only to kind classification, qa, listops (kind is 'lm')");
}

}  // namespace
}  // namespace longtrain
