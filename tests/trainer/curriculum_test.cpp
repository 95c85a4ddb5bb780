// Staged training: curriculum parsing and expansion, phase validation, the
// position-table copy, a tiny staged run crossing two phases (metrics,
// resume bit-exact across and next to the boundary), the extension test
// (copied rows keep the loss near its short-context value, random rows do
// not), `extend` and `--init`.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "model/lm.h"
#include "model/sparse_mixer.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/extend.h"
#include "trainer/loop.h"

namespace longtrain {
namespace {

TEST(Curriculum, ExplicitPhasesCarryDefaultsAndSumSteps) {
  Recipe r = load_recipe("", {"model.max_positions=64", "train.lr=1e-3", "train.min_lr=1e-4", "train.batch_size=8", "train.warmup=5",
                              "curriculum.phases=[{seq_len: 64, steps: 10}, {seq_len: 128, steps: 20, lr: 5e-4, "
                              "tokens_per_step: 512, warmup: 2}]"});
  ASSERT_EQ(r.curriculum.phases.size(), 2u);
  const auto& a = r.curriculum.phases[0];
  const auto& b = r.curriculum.phases[1];
  EXPECT_EQ(a.seq_len, 64);
  EXPECT_EQ(a.batch_size, 8);
  EXPECT_DOUBLE_EQ(a.lr, 1e-3);
  EXPECT_DOUBLE_EQ(a.min_lr, 1e-4);
  EXPECT_EQ(a.warmup, 5);
  EXPECT_EQ(b.batch_size, 4);  // 512 tokens / 128
  EXPECT_DOUBLE_EQ(b.min_lr, 5e-5);
  EXPECT_EQ(b.warmup, 2);
  EXPECT_EQ(r.train.steps, 30);
  auto phases = build_phases(r);
  ASSERT_EQ(phases.size(), 2u);
  EXPECT_EQ(phases[1].first_step, 10);
  EXPECT_EQ(phases[1].recipe->train.seq_len, 128);
  EXPECT_EQ(phases[0].recipe->model.max_positions, 64);
  EXPECT_EQ(phases[1].recipe->model.max_positions, 128);  // the learned table grows to the phase's length
  EXPECT_EQ(phase_at(phases, 0), 0);
  EXPECT_EQ(phase_at(phases, 9), 0);
  EXPECT_EQ(phase_at(phases, 10), 1);  // the step after 10 completed ones belongs to phase 1
  EXPECT_EQ(phase_at(phases, 30), 1);
}

TEST(Curriculum, DoublingShorthandExpands) {
  Recipe r = load_recipe("", {"model.n_layers=2", "model.n_heads=2", "model.max_positions=64",
                              "model.mixer={type: sliding, block: 8}",
                              "curriculum.doubling={count: 3, seq_len: 64, steps: 4, lr: 4e-3, "
                              "window: [8, [8, 12]], tokens_per_step: 1024}"});
  ASSERT_EQ(r.curriculum.phases.size(), 3u);
  for (int64_t i = 0; i < 3; ++i) {
    const auto& p = r.curriculum.phases[i];
    EXPECT_EQ(p.seq_len, 64 << i);
    EXPECT_DOUBLE_EQ(p.lr, 4e-3 / (1 << i));
    EXPECT_EQ(p.batch_size, 1024 / (64 << i));
    const YAML::Node w = YAML::Load(p.window);
    EXPECT_EQ(w[0].as<int64_t>(), 8 << i);
    EXPECT_EQ(w[1][1].as<int64_t>(), 12 << i);
  }
  // The resolved recipe states the explicit list.
  EXPECT_EQ(r.resolved["curriculum"]["phases"].size(), 3u);
  EXPECT_FALSE(r.resolved["curriculum"]["doubling"]);
  Recipe again = parse_recipe(YAML::Clone(r.resolved), "resolved");
  EXPECT_EQ(again.curriculum.phases.size(), 3u);
  EXPECT_EQ(again.train.steps, 12);
  auto phases = build_phases(r);
  EXPECT_EQ(phases[2].recipe->model.max_positions, 256);  // learned table grows to the phase's length
  EXPECT_EQ(phases[2].recipe->resolved["model"]["mixer"]["window"][1][1].as<int64_t>(), 48);
}

TEST(Curriculum, BadPhasesAreStartUpErrorsNamingThePhase) {
  auto has = [](const std::string& e, const std::string& part) { return e.find(part) != std::string::npos; };
  auto e = recipe_error_of({"curriculum.phases=[{steps: 10}]"});
  EXPECT_TRUE(has(e, "curriculum.phases[0].seq_len") && has(e, "every phase needs seq_len")) << e;
  e = recipe_error_of({"curriculum.phases=[{seq_len: 64, steps: 1, speed: 2}]"});
  EXPECT_TRUE(has(e, "speed")) << e;
  e = recipe_error_of({"model.mixer={type: sliding, window: 16}",
                       "curriculum.phases=[{seq_len: 64, steps: 1}, {seq_len: 128, steps: 1, window: 200}]"});
  EXPECT_TRUE(has(e, "curriculum.phases[1]") && has(e, "phase 1 (seq_len 128)") && has(e, "window 200")) << e;
  e = recipe_error_of({"curriculum.phases=[{seq_len: 64, steps: 1, window: 8}]"});
  EXPECT_TRUE(has(e, "no sliding mixer")) << e;
  e = recipe_error_of({"curriculum.phases=[{seq_len: 64, steps: 1, tokens_per_step: 100}]"});
  EXPECT_TRUE(has(e, "tokens_per_step") && has(e, "not a positive multiple of seq_len 64")) << e;
  e = recipe_error_of({"curriculum.doubling={count: 0, seq_len: 64, steps: 1}"});
  EXPECT_TRUE(has(e, "curriculum.doubling.count")) << e;
  e = recipe_error_of({"curriculum.rope_interpolation=true", "curriculum.doubling={count: 2, seq_len: 64, steps: 1}"});
  EXPECT_TRUE(has(e, "model.positions: rope only")) << e;
  Recipe rope = load_recipe("", {"model.positions=rope", "model.rope_scale=1", "curriculum.rope_interpolation=true",
                                 "curriculum.doubling={count: 3, seq_len: 64, steps: 1}"});
  EXPECT_DOUBLE_EQ(build_phases(rope)[2].recipe->model.rope_scale, 4.0);
}

TEST(Curriculum, PositionTableGrowsByCopyingLearnedRows) {
  torch::manual_seed(1);
  ModelConfig small;
  small.vocab_size = 20;
  small.d_model = 16;
  small.n_layers = 1;
  small.n_heads = 2;
  small.max_positions = 24;
  ModelConfig big = small;
  big.max_positions = 60;
  LanguageModel a(small), b(big);
  copy_parameters(*a, *b);
  auto pa = a->named_parameters()["pos_emb.weight"], pb = b->named_parameters()["pos_emb.weight"];
  for (int64_t i = 0; i < 60; ++i) ASSERT_TRUE(torch::equal(pb[i], pa[i % 24])) << "row " << i;
  EXPECT_TRUE(torch::equal(a->named_parameters()["tok_emb.weight"], b->named_parameters()["tok_emb.weight"]));
  // Shapes that cannot carry over are named.
  ModelConfig wider = small;
  wider.d_model = 32;
  LanguageModel c(wider);
  try {
    copy_parameters(*a, *c);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tok_emb.weight"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------ staged runs

std::vector<std::string> staged(const std::string& dir, std::vector<std::string> extra = {}) {
  auto o = tiny_overrides(dir);
  for (const std::string s :
       {"train.device=cpu", "model.max_positions=32", "model.mixer={type: sliding, block: 8}", "checkpoint.every=1",
        "checkpoint.keep_last=20",
        "curriculum.phases=[{seq_len: 32, steps: 4, window: 8, batch_size: 4}, "
        "{seq_len: 64, steps: 4, window: 16, batch_size: 2, lr: 1.5e-3, warmup: 1}]"})
    o.push_back(s);
  o.insert(o.end(), extra.begin(), extra.end());
  return o;
}

struct Logged {
  std::vector<double> loss;
  std::vector<int64_t> phase, seq_len;
};

Logged logged(const std::string& dir) {
  Logged l;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("eval")) continue;
    l.loss.push_back(j["loss"].get<double>());
    l.phase.push_back(j["phase"].get<int64_t>());
    l.seq_len.push_back(j["seq_len"].get<int64_t>());
  }
  return l;
}

TEST(CurriculumRun, CrossesTwoPhasesExtendingTableAndWindows) {
  const auto dir = fresh_run_dir("staged");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult r = train(load_recipe("", staged(dir)), opt);
  EXPECT_EQ(r.step, 8);
  EXPECT_EQ(r.phase, 1);
  const Logged l = logged(dir);
  ASSERT_EQ(l.loss.size(), 8u);
  EXPECT_EQ(l.phase, (std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(l.seq_len, (std::vector<int64_t>{32, 32, 32, 32, 64, 64, 64, 64}));
  // The final model has the phase-1 table and windows.
  EXPECT_EQ(r.model->named_parameters()["pos_emb.weight"].size(0), 64);
  auto mixer = std::dynamic_pointer_cast<SparseAttentionMixerImpl>(r.model->blocks()[0]->as<BlockImpl>()->mixer());
  ASSERT_TRUE(mixer);
  EXPECT_EQ(mixer->layout_of_head(0, 64).allowed_pairs(), 16 * 64 - 16 * 15 / 2);
  // The checkpoint of step 4 holds the phase-0 model, the last the phase-1 one.
  EXPECT_EQ(read_train_state(dir + "/checkpoints/step-00000004").phase, 0);
  EXPECT_EQ(read_train_state(dir + "/checkpoints/step-00000008").phase, 1);
  EXPECT_EQ(checkpoint_recipe(dir + "/checkpoints/step-00000004")["model"]["max_positions"].as<int64_t>(), 32);
  EXPECT_EQ(checkpoint_recipe(dir + "/checkpoints/step-00000008")["model"]["max_positions"].as<int64_t>(), 64);
}

// Interrupted at the boundary (after step 4), just before it (3) and just
// after it (5), the resumed runs log the same losses to the last bit and end
// with the same parameters as the uninterrupted one.
TEST(CurriculumRun, ResumeIsBitExactAcrossThePhaseBoundary) {
  const auto straight = fresh_run_dir("staged_straight");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult full = train(load_recipe("", staged(straight)), opt);
  const Logged want = logged(straight);
  for (int64_t stop : {3, 4, 5}) {
    const auto dir = fresh_run_dir("staged_resume" + std::to_string(stop));
    TrainOptions first = opt;
    first.stop_after = stop;
    TrainResult part = train(load_recipe("", staged(dir)), first);
    ASSERT_TRUE(part.interrupted);
    TrainOptions rest = opt;
    rest.resume = "auto";
    TrainResult resumed = train(load_recipe("", staged(dir)), rest);
    EXPECT_EQ(resumed.step, 8);
    const Logged got = logged(dir);
    ASSERT_EQ(got.loss.size(), want.loss.size()) << "stopped after " << stop;
    for (size_t i = 0; i < want.loss.size(); ++i) {
      EXPECT_EQ(got.loss[i], want.loss[i]) << "step " << i + 1 << ", stopped after " << stop;
    }
    auto a = full.model->named_parameters(), b = resumed.model->named_parameters();
    for (const auto& item : a) {
      EXPECT_TRUE(torch::equal(item.value(), b[item.key()])) << item.key() << ", stopped after " << stop;
    }
  }
}

// ------------------------------------------------------------ extension

// Next-token losses [N, 256] over `windows` [N, 257]: the model reads 256
// tokens at once, or (chunk = 64) four 64-token pieces, each from position 0,
// as a model with a 64-row table must.
torch::Tensor token_losses(LanguageModel& model, const torch::Tensor& windows, int64_t chunk) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t N = windows.size(0), L = windows.size(1) - 1;
  auto logits = model->forward(windows.slice(1, 0, L).reshape({N * L / chunk, chunk}));
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              windows.slice(1, 1, L + 1).reshape(-1),
                                              torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
      .view({N, L});
}

// The Longformer paper's check (1.957 vs 10.299 BPC): right after extending
// a trained table 4x, the loss on long windows stays close to the
// short-context loss on the same text when the new rows copy the learned
// ones, and not with random new rows. The copy's cost is at the wraps (the 16
// tokens after positions 64, 128, 192 see "position 0" with context behind
// them); everywhere else it must be far closer than random rows.
TEST(PositionExtension, CopiedRowsKeepTheLossRandomRowsDoNot) {
  const auto dir = fresh_run_dir("extend_source");
  TrainOptions opt;
  opt.print_recipe = false;
  // Local attention, as in Longformer: each token sees the 16 before it.
  Recipe recipe = tiny_recipe(dir, {"train.device=cpu", "train.steps=300", "train.seq_len=64", "model.max_positions=64",
                                    "model.d_model=64", "train.batch_size=8", "data.synthetic.filler=6",
                                    "model.mixer={type: sliding, window: 16, block: 16}"});
  TrainResult trained = train(recipe, opt);
  ByteTokenizer tok;
  const Corpus corpus = build_corpus(recipe.data, tok);
  // 32 validation windows of 257 tokens, evenly spaced.
  const auto& val = corpus.val.tokens;
  const int64_t n = 32, stride = (static_cast<int64_t>(val.size()) - 257) / n;
  ASSERT_GT(stride, 0);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < n; ++i) {
    rows.push_back(torch::tensor(std::vector<int64_t>(val.begin() + i * stride, val.begin() + i * stride + 257)));
  }
  const auto windows = torch::stack(rows);
  const auto short_losses = token_losses(trained.model, windows, 64);

  // Random new rows two ways: the model's initialisation (N(0, init_std)) and
  // the learned rows' own scale (so only the copying differs, not the norm).
  ModelConfig long_cfg = trained.model->config();
  long_cfg.max_positions = 256;
  LanguageModel copied(long_cfg), random_init(long_cfg), random_scaled(long_cfg);
  for (auto* m : {&copied, &random_init, &random_scaled}) copy_parameters(*trained.model, **m);
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(5);
    const double learned_std = trained.model->named_parameters()["pos_emb.weight"].std().item<double>();
    random_init->named_parameters()["pos_emb.weight"].narrow(0, 64, 192).normal_(0.0, long_cfg.init_std);
    random_scaled->named_parameters()["pos_emb.weight"].narrow(0, 64, 192).normal_(0.0, learned_std);
  }
  // Positions 64..255 away from the wraps: (p mod 64) >= 16.
  auto away = (torch::arange(256) >= 64) & (torch::arange(256).remainder(64) >= 16);
  auto excess = [&](LanguageModel& m) {
    auto l = token_losses(m, windows, 256);
    return std::make_pair(l.mean().item<double>(),
                          (l - short_losses).index({torch::indexing::Slice(), away}).mean().item<double>());
  };
  const auto [copied_all, copied_away] = excess(copied);
  const auto [init_all, init_away] = excess(random_init);
  const auto [scaled_all, scaled_away] = excess(random_scaled);
  std::printf("nats/token, short-context %.3f; 4x windows: copied %.3f (+%.3f away from wraps), random rows "
              "%.3f (+%.3f; init std), %.3f (+%.3f; learned std)\n",
              short_losses.mean().item<double>(), copied_all, copied_away, init_all, init_away, scaled_all,
              scaled_away);
  EXPECT_LT(copied_all, init_all);
  EXPECT_LT(copied_all, scaled_all);
  EXPECT_LT(std::abs(copied_away), 0.05) << "copied rows drift from the short-context loss";
  EXPECT_LT(copied_away, 0.25 * init_away);
  EXPECT_LT(copied_away, 0.25 * scaled_away);
}

TEST(PositionExtension, ExtendCommandAndInitRun) {
  const auto dir = fresh_run_dir("extend_cmd");
  TrainOptions opt;
  opt.print_recipe = false;
  TrainResult trained = train(tiny_recipe(dir, {"train.device=cpu", "train.steps=4", "model.max_positions=64"}), opt);
  const auto out = fresh_run_dir("extend_cmd_out");
  const std::string ext = extend_checkpoint(trained.checkpoint, 256, out);
  YAML::Node stored = checkpoint_recipe(ext);
  EXPECT_EQ(stored["model"]["max_positions"].as<int64_t>(), 256);
  Recipe r = parse_recipe(stored, ext);
  LanguageModel m(r.model);
  load_checkpoint(ext, *m, nullptr, torch::kCPU);
  auto table = m->named_parameters()["pos_emb.weight"];
  auto old = trained.model->named_parameters()["pos_emb.weight"];
  for (int64_t start : {0, 64, 128, 192}) EXPECT_TRUE(torch::equal(table.narrow(0, start, 64), old)) << start;
  EXPECT_THROW(extend_checkpoint(trained.checkpoint, 32, out + "_short"), std::invalid_argument);

  // A fresh run at length 256 initialised from the short checkpoint.
  const auto init_dir = fresh_run_dir("extend_init");
  TrainOptions init = opt;
  init.init = trained.checkpoint;
  TrainResult longer =
      train(tiny_recipe(init_dir, {"train.device=cpu", "train.steps=2", "train.seq_len=256", "model.max_positions=256"}), init);
  EXPECT_EQ(longer.step, 2);
  const auto fresh_dir = fresh_run_dir("extend_fresh");
  TrainResult fresh =
      train(tiny_recipe(fresh_dir, {"train.device=cpu", "train.steps=1", "train.seq_len=256", "model.max_positions=256"}), opt);
  EXPECT_LT(longer.before.loss, fresh.before.loss - 0.3)
      << "the initialised run does not start from the trained weights";
}

}  // namespace
}  // namespace longtrain
