// Fine-tuning heads: the span decoder and losses on hand-made logits, and
// both heads learning trivially separable toy sets with a bidirectional body,
// through full attention and through sliding windows with Longformer global
// attention on the classification / question tokens.
#include <gtest/gtest.h>

#include "model/task_heads.h"
#include "tests/trainer/test_recipes.h"

namespace longtrain {
namespace {

constexpr int64_t kVocab = 20, kLen = 24;

LanguageModel bidirectional_body(const std::string& mixer) {
  Recipe r = load_recipe("", {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_positions=32",
                              "model.causal=false", "train.seq_len=32", "model.mixer=" + mixer});
  r.model.vocab_size = kVocab;
  return LanguageModel(r.model);
}

const std::vector<std::string> kMixers = {
    "{type: full}",
    // Window 4: the classification token reaches far positions only as a global token.
    "{type: sliding, window: 4, block: 4, global_first: 1}",
};

TEST(TaskHeads, BestSpanAndMaskedLosses) {
  // Row 0: best start 1, best end 3; row 1: the best end (4) is masked out.
  auto s = torch::tensor({{0.0, 5.0, 0.0, 0.0, 0.0}, {0.0, 0.0, 4.0, 0.0, 0.0}});
  auto e = torch::tensor({{0.0, 0.0, 0.0, 6.0, 1.0}, {0.0, 0.0, 1.0, 2.0, 9.0}});
  auto mask = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 1, 0}}).to(torch::kBool);
  auto [start, end] = best_span(s, e, mask, 5);
  EXPECT_EQ(start[0].item<int64_t>(), 1);
  EXPECT_EQ(end[0].item<int64_t>(), 3);
  EXPECT_EQ(start[1].item<int64_t>(), 2);
  EXPECT_EQ(end[1].item<int64_t>(), 3);
  // max_len 2 forbids the length-3 span of row 0.
  auto [s2, e2] = best_span(s, e, mask, 2);
  EXPECT_EQ(e2[0].item<int64_t>() - s2[0].item<int64_t>() < 2, true);
  // A masked position takes no probability: logits there do not change the loss.
  auto s_changed = s.clone();
  s_changed[1][4] = 100.0;
  auto t0 = torch::tensor({1, 2}), t1 = torch::tensor({3, 3});
  EXPECT_NEAR(span_loss(s, e, t0, t1, mask).item<double>(), span_loss(s_changed, e, t0, t1, mask).item<double>(), 1e-6);
  EXPECT_NEAR(classification_loss(torch::tensor({{0.0, 0.0}}), torch::tensor({1})).item<double>(), std::log(2.0), 1e-6);
}

// Class c: a classification token (1) at position 0, then tokens from class
// c's own range ({2..9} or {10..17}).
std::pair<torch::Tensor, torch::Tensor> classification_batch(int64_t B) {
  auto labels = torch::randint(0, 2, {B}, torch::kInt64);
  auto tokens = torch::randint(2, 10, {B, kLen}, torch::kInt64) + 8 * labels.view({B, 1});
  tokens.select(1, 0).fill_(1);
  return {tokens, labels};
}

TEST(TaskHeads, ClassifierLearnsASeparableToySet) {
  for (const auto& mixer : kMixers) {
    SCOPED_TRACE(mixer);
    torch::manual_seed(0);
    SequenceClassifier model(bidirectional_body(mixer), 2);
    torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3));
    auto cls = torch::zeros({32}, torch::kInt64);
    auto global = torch::zeros({32, kLen}, torch::kBool);
    global.select(1, 0).fill_(true);  // Longformer: the classification token is global
    for (int step = 0; step < 60; ++step) {
      auto [tokens, labels] = classification_batch(32);
      auto loss = classification_loss(model->forward(tokens, cls, global), labels);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    model->eval();
    torch::NoGradGuard no_grad;
    auto [tokens, labels] = classification_batch(32);
    auto acc = (model->forward(tokens, cls, global).argmax(1) == labels).to(torch::kFloat32).mean().item<double>();
    EXPECT_GE(acc, 0.97);
  }
}

// Question tokens [1, q, 0] then context tokens from {5..9} holding one
// answer token (12) at a random place; the answer is that token.
struct QaBatch {
  torch::Tensor tokens, start, end, context;
};

QaBatch qa_batch(int64_t B) {
  QaBatch b;
  b.tokens = torch::randint(5, 10, {B, kLen}, torch::kInt64);
  b.tokens.select(1, 0).fill_(1);
  b.tokens.select(1, 1).copy_(torch::randint(3, 5, {B}, torch::kInt64));
  b.tokens.select(1, 2).fill_(0);
  b.start = torch::randint(3, kLen - 3, {B}, torch::kInt64);
  b.end = b.start.clone();
  for (int64_t r = 0; r < B; ++r) b.tokens[r][b.start[r].item<int64_t>()] = 12;
  b.context = torch::ones({B, kLen}, torch::kBool);
  b.context.narrow(1, 0, 3).fill_(false);
  return b;
}

TEST(TaskHeads, SpanExtractorLearnsAToySet) {
  for (const auto& mixer : kMixers) {
    SCOPED_TRACE(mixer);
    torch::manual_seed(1);
    SpanExtractor model(bidirectional_body(mixer));
    torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3));
    for (int step = 0; step < 100; ++step) {
      auto b = qa_batch(32);
      auto [s, e] = model->forward(b.tokens, ~b.context);  // the question tokens are global
      auto loss = span_loss(s, e, b.start, b.end, b.context);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    model->eval();
    torch::NoGradGuard no_grad;
    auto b = qa_batch(64);
    auto [s, e] = model->forward(b.tokens, ~b.context);
    auto [start, end] = best_span(s, e, b.context, 8);
    auto exact = ((start == b.start) & (end == b.end)).to(torch::kFloat32).mean().item<double>();
    EXPECT_GE(exact, 0.9);
  }
}

}  // namespace
}  // namespace longtrain
