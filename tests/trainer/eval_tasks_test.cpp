// The evaluation protocol and scorers: window/stride arithmetic (every token
// scored exactly once, with the promised context), the strided loss against a
// brute-force per-token computation, known-answer models (uniform logits give
// log V; a model that always says '7' gets exactly the "777" answers right),
// and `longtrain eval --tasks` / `longtrain generate` end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "model/lm.h"
#include "tests/trainer/cli_run.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/eval_tasks.h"
#include "trainer/lm_protocol.h"

namespace longtrain {
namespace {

TEST(StrideWindows, KnownSmallCase) {
  // 11 tokens = 10 predictions, windows of 4 advanced by 2.
  const auto w = stride_windows(11, 4, 2);
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[0].start, 0);
  EXPECT_EQ(w[0].len, 4);
  EXPECT_EQ(w[0].score_from, 0);
  EXPECT_EQ(w[1].start, 2);
  EXPECT_EQ(w[1].len, 4);
  EXPECT_EQ(w[1].score_from, 2);
  EXPECT_EQ(w[2].start, 4);
  EXPECT_EQ(w[2].len, 4);
  EXPECT_EQ(w[2].score_from, 2);
  EXPECT_EQ(w[3].start, 6);
  EXPECT_EQ(w[3].len, 4);
  EXPECT_EQ(w[3].score_from, 2);
  EXPECT_EQ(stride_windows(11, 4, 2, 2).size(), 2u);
}

TEST(StrideWindows, EveryPredictionScoredOnceWithLongContext) {
  for (int64_t n : {2, 5, 64, 101, 1000}) {
    for (int64_t length : {int64_t{1}, int64_t{7}, int64_t{16}, int64_t{64}}) {
      for (int64_t stride : {int64_t{1}, int64_t{3}, length / 2, length}) {
        if (stride < 1 || stride > length) continue;
        SCOPED_TRACE("n " + std::to_string(n) + " length " + std::to_string(length) + " stride " +
                     std::to_string(stride));
        std::vector<int> scored(static_cast<size_t>(n - 1), 0);
        const auto windows = stride_windows(n, length, stride);
        for (size_t k = 0; k < windows.size(); ++k) {
          const auto& w = windows[k];
          ASSERT_GE(w.start, 0);
          ASSERT_LE(w.len, length);
          ASSERT_LE(w.start + w.len, n - 1);  // the last input predicts the stream's last token
          ASSERT_LT(w.score_from, w.len);
          if (k > 0) {
            // Past the first window, a scored prediction has >= length - stride
            // tokens before its own (when the stream is long enough to have them).
            EXPECT_GE(w.score_from, std::min(length - stride, w.start + w.score_from));
          }
          for (int64_t i = w.score_from; i < w.len; ++i) scored[w.start + i] += 1;
        }
        for (int64_t j = 0; j < n - 1; ++j) ASSERT_EQ(scored[j], 1) << "prediction " << j;
      }
    }
  }
  EXPECT_THROW(stride_windows(10, 4, 5), c10::Error);
}

LanguageModel tiny_lm(int64_t vocab) {
  ModelConfig cfg;
  cfg.vocab_size = vocab;
  cfg.d_model = 16;
  cfg.n_layers = 2;
  cfg.n_heads = 2;
  cfg.max_positions = 64;
  cfg.init_std = 0.2;
  torch::manual_seed(0);
  return LanguageModel(cfg);
}

TokenStream random_stream(int64_t n, int64_t vocab) {
  TokenStream s;
  auto t = torch::randint(0, vocab, {n}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) s.tokens.push_back(static_cast<int32_t>(t[i].item<int64_t>()));
  s.doc_starts = {0};
  return s;
}

TEST(LmProtocol, EqualsBruteForceAndBucketsCountFullWindows) {
  ByteTokenizer tok;
  auto model = tiny_lm(tok.vocab_size());
  model->eval();
  const auto stream = random_stream(150, 200);
  LmProtocolOptions o;
  o.length = 32;
  o.stride = 12;
  o.max_windows = -1;
  o.buckets = 4;
  o.batch_size = 3;
  const auto r = evaluate_lm_protocol(model, stream, tok, o);
  // Brute force: each window alone, summing the scored predictions.
  torch::NoGradGuard no_grad;
  double nats = 0;
  int64_t count = 0, full = 0;
  for (const auto& w : stride_windows(150, 32, 12)) {
    std::vector<int64_t> in(stream.tokens.begin() + w.start, stream.tokens.begin() + w.start + w.len);
    auto logp = torch::log_softmax(model->forward(torch::tensor(in).view({1, -1})), -1)[0];
    for (int64_t i = w.score_from; i < w.len; ++i) {
      nats -= logp[i][stream.tokens[w.start + i + 1]].item<double>();
      count += 1;
    }
    full += w.len == 32;
  }
  EXPECT_EQ(r.tokens, 149);
  EXPECT_EQ(count, 149);
  EXPECT_NEAR(r.loss, nats / count, 1e-5);
  ASSERT_EQ(r.bucket_loss.size(), 4u);
  EXPECT_EQ(r.bucket_size, 8);
  for (int64_t c : r.bucket_count) EXPECT_EQ(c, full * 8);
}

TEST(LmProtocol, UniformModelScoresLogV) {
  ByteTokenizer tok;
  auto model = tiny_lm(tok.vocab_size());
  {
    // Zero final norm: every position's hidden state and logits are 0.
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key().rfind("final_norm.", 0) == 0) p.value().zero_();
    }
  }
  const auto stream = random_stream(100, 256);  // all bytes: 1 byte per token
  LmProtocolOptions o;
  o.length = 16;
  o.stride = 5;
  const auto r = evaluate_lm_protocol(model, stream, tok, o);
  EXPECT_NEAR(r.loss, std::log(258.0), 1e-5);
  EXPECT_NEAR(r.bits_per_byte, std::log2(258.0), 1e-5);
  for (double l : r.bucket_loss) EXPECT_NEAR(l, std::log(258.0), 1e-5);
}

TEST(RecallScorer, AlwaysSevenModelGetsExactlyTheSevens) {
  ByteTokenizer tok;
  auto model = tiny_lm(tok.vocab_size());
  {
    // Hidden state = the final norm's bias (weight 0) = all ones; tied logits
    // = E·1, which only row '7' (all ones) makes positive.
    torch::NoGradGuard no_grad;
    auto params = model->named_parameters();
    params["final_norm.weight"].zero_();
    params["final_norm.bias"].fill_(1.0);
    params["tok_emb.weight"].zero_();
    params["tok_emb.weight"]['7'].fill_(1.0);
  }
  auto item = [](const std::string& ans) {
    TaskItem t;
    t.pieces = {{"facts: abc777\nthe old fox. ask abc", false}, {ans, true}, {". ", false}};
    return t;
  };
  TaskItem two;  // two answers, one right, in a longer item (padding the batch)
  two.pieces = {{"ask abc", false}, {"77", true}, {". ask xyz", false}, {"71", true}, {". the end of it", false}};
  const auto s = score_recall(model, tok, {item("777"), item("778"), item("877"), two}, 3, torch::kCPU, false);
  EXPECT_EQ(s.items, 4);
  EXPECT_EQ(s.answers, 5);
  EXPECT_EQ(s.correct, 2);
}

TEST(EvalTasks, UnknownTaskListsTheValidOnes) {
  ByteTokenizer tok;
  auto model = tiny_lm(tok.vocab_size());
  EvalTaskOptions o;
  o.tasks = {"lm", "needle"};
  o.lengths = {16};
  std::ostringstream log;
  try {
    run_eval_tasks(model, random_stream(50, 100), tok, o, log);
    FAIL() << "no error for an unknown task";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("lm, passkey, mqar"), std::string::npos) << e.what();
  }
}

TEST(EvalCli, TasksReportAndGenerate) {
  const auto dir = fresh_run_dir("eval_tasks_cli");
  CliRun t = run_cli("train " + std::string(LONGTRAIN_SOURCE_DIR) + "/recipes/tiny.yaml" +
                     set_args(tiny_overrides(dir)) + " --set train.steps=4");
  ASSERT_EQ(t.code, 0) << t.out;
  const std::string ckpt = dir + "/checkpoints/step-00000004";
  const std::string report = dir + "/report.json";
  // 128 is beyond the 64-position table (items fall short of their length by
  // less than one filler sentence, so all are > 64): reported as skipped, not fatal.
  CliRun e = run_cli("eval " + ckpt + " --tasks lm,passkey,mqar --lengths 48,64,128 --samples 2 --pairs 1,2 " +
                     "--depths 0,1 --max-windows 4 --name tiny --out " + report);
  ASSERT_EQ(e.code, 0) << e.out;
  std::ifstream in(report);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["name"], "tiny");
  ASSERT_EQ(j["tasks"]["lm"].size(), 3u);
  EXPECT_GT(j["tasks"]["lm"][0]["loss"].get<double>(), 0.0);
  EXPECT_EQ(j["tasks"]["lm"][1]["loss_by_position"]["loss"].size(), 16u);
  EXPECT_TRUE(j["tasks"]["lm"][2].contains("skipped"));
  EXPECT_EQ(j["tasks"]["passkey"]["accuracy"].size(), 3u);     // lengths
  EXPECT_EQ(j["tasks"]["passkey"]["accuracy"][0].size(), 2u);  // depths
  EXPECT_TRUE(j["tasks"]["passkey"]["accuracy"][2][0].is_null());
  EXPECT_EQ(j["tasks"]["mqar"]["pairs"], nlohmann::json({1, 2}));
  EXPECT_EQ(run_cli("eval " + ckpt + " --tasks lm,nope").code, 1);

  CliRun g = run_cli("generate " + ckpt + " --prompt 'facts: ' --max-new-tokens 12 --temperature 0");
  ASSERT_EQ(g.code, 0) << g.out;
  EXPECT_EQ(g.out.rfind("facts: ", 0), 0u) << g.out;
  CliRun g2 = run_cli("generate " + ckpt + " --prompt 'facts: ' --max-new-tokens 12 --temperature 0 --no-cache");
  EXPECT_EQ(g.out, g2.out);
}

}  // namespace
}  // namespace longtrain
