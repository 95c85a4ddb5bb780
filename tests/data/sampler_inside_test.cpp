// window_start 'inside': every window lies within one document and every
// position that allows that is drawn; too-short corpora are a clear error;
// the draws are a pure function of (seed, step, micro, rank), so a resumed run
// trains on exactly the windows of an uninterrupted one.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/prepare.h"
#include "data/sampler.h"
#include "tests/data/corpus_files.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/loop.h"

namespace longtrain {
namespace {

const std::vector<int64_t> kLengths = {3, 20, 5, 40, 12};

// Token i of document d is 100 (d + 1) + i, so a token says where it came from; <eos> is 0.
TokenStream labelled_stream() {
  TokenStream s;
  for (size_t d = 0; d < kLengths.size(); ++d) {
    s.doc_starts.push_back(static_cast<int64_t>(s.tokens.size()));
    for (int64_t i = 0; i < kLengths[d]; ++i) s.tokens.push_back(static_cast<int32_t>(100 * (d + 1) + i));
    s.tokens.push_back(0);
  }
  return s;
}

TEST(SamplerInside, WindowsNeverCrossADocumentBoundary) {
  const TokenStream s = labelled_stream();
  const int64_t seq_len = 9;  // windows of 10: documents 1, 3 and 4 are long enough
  WindowSampler sampler(s, seq_len, 11, 0, parse_window_start("inside"));
  std::set<int64_t> starts;
  for (int64_t step = 0; step < 100; ++step) {
    const auto x = sampler.batch(step, 0, 20);
    for (int64_t r = 0; r < 20; ++r) {
      const int64_t first = x[r][0].item<int64_t>();
      const int64_t doc = first / 100 - 1, offset = first % 100;
      ASSERT_TRUE(doc == 1 || doc == 3 || doc == 4) << "drew from document " << doc;
      ASSERT_LE(offset + seq_len + 1, kLengths[doc]) << "window runs past document " << doc;
      for (int64_t i = 0; i <= seq_len; ++i) ASSERT_EQ(x[r][i].item<int64_t>(), first + i) << "row " << r;
      starts.insert(first);
    }
  }
  // Every valid start is drawn: (20-9) + (40-9) + (12-9) = 45 of them.
  EXPECT_EQ(starts.size(), 45u);
}

TEST(SamplerInside, TooShortDocumentsAreAClearError) {
  const TokenStream s = labelled_stream();
  try {
    WindowSampler(s, 50, 1, 0, parse_window_start("inside"));
    FAIL() << "no document holds a window of 51 tokens";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("seq_len + 1 = 51"), std::string::npos) << msg;
    EXPECT_NE(msg.find("the longest of the 5 has 40"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(WindowSampler(s, 39, 1, 0, parse_window_start("inside")));  // exactly fits document 3
}

TEST(SamplerInside, PureFunctionOfSeedStepMicroRank) {
  const TokenStream s = labelled_stream();
  const auto inside = parse_window_start("inside");
  WindowSampler a(s, 9, 5, 0, inside), other_seed(s, 9, 6, 0, inside), rank1(s, 9, 5, 1, inside);
  std::vector<torch::Tensor> drawn;
  for (int64_t step = 0; step < 8; ++step) drawn.push_back(a.batch(step, 0, 16));
  // A sampler built afresh, as after a resume at step 5, draws what the first one did.
  WindowSampler resumed(s, 9, 5, 0, inside);
  for (int64_t step = 5; step < 8; ++step) EXPECT_TRUE(resumed.batch(step, 0, 16).equal(drawn[step])) << step;
  EXPECT_FALSE(drawn[3].equal(drawn[4]));
  EXPECT_FALSE(a.batch(3, 1, 16).equal(drawn[3]));
  EXPECT_FALSE(other_seed.batch(3, 0, 16).equal(drawn[3]));
  EXPECT_FALSE(rank1.batch(3, 0, 16).equal(drawn[3]));
}

std::vector<double> logged_losses(const std::string& run_dir) {
  std::vector<double> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("eval")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

TEST(SamplerInside, ResumedTrainingOnShardsIsBitExact) {
  const auto root = fresh_dir("inside_resume");
  for (int i = 0; i < 12; ++i)
    write_file(root + "/in/" + std::to_string(i) + ".txt", generated_text(i, 6 + i));
  PrepareOptions po;
  po.inputs = {root + "/in"};
  po.out_dir = root + "/shards";
  po.progress = false;
  prepare(po);
  const std::vector<std::string> data = {"data.source=shards", "data.paths=[" + root + "/shards]",
                                         "data.window_start=inside", "train.steps=6", "checkpoint.every=0"};
  TrainOptions opt;
  opt.print_recipe = false;
  const auto whole = fresh_run_dir("inside_whole");
  train(tiny_recipe(whole, data), opt);
  const auto parts = fresh_run_dir("inside_parts");
  opt.stop_after = 3;
  EXPECT_TRUE(train(tiny_recipe(parts, data), opt).interrupted);
  opt.stop_after = 0;
  opt.resume = "auto";
  train(tiny_recipe(parts, data), opt);
  const auto a = logged_losses(whole), b = logged_losses(parts);
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace longtrain
