// Activation checkpointing (model/activation_checkpoint.h) and the chunked
// output head + cross-entropy (model/chunked_cross_entropy.h) against the
// plain paths: the loss and every parameter gradient agree in fp64, with
// dropout on, for full, sliding, linear and hybrid stacks.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include "model/chunked_cross_entropy.h"
#include "model/lm.h"
#include "tests/model/gradcheck.h"
#include "trainer/config.h"

namespace longtrain {
namespace {

// fp64 sums in a different order differ by a few ulps of the largest term.
constexpr double kTol = 1e-11;

ModelConfig model_of(const std::string& mixer, std::vector<std::string> extra = {}) {
  std::vector<std::string> sets = {"model.vocab_size=23", "model.d_model=16", "model.n_layers=2",
                                   "model.n_heads=2", "model.max_positions=64", "model.dropout=0.1",
                                   "train.seq_len=37", "model.mixer=" + mixer};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return load_recipe("", sets).model;
}

struct StepResult {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;
  torch::Tensor next_random;  // what the generator draws after backward
};

StepResult run_step(const ModelConfig& cfg, Checkpointing c, int64_t loss_chunk) {
  torch::manual_seed(0);
  LanguageModel m(cfg);
  m->to(torch::kFloat64);
  m->train();
  m->set_checkpointing(c);
  const auto tokens = torch::randint(0, cfg.vocab_size, {2, 38}, torch::kInt64);
  auto targets = tokens.slice(1, 1, 38).clone();
  targets.index_put_({0, torch::indexing::Slice(0, 5)}, kIgnoreIndex);  // some ignored targets
  torch::manual_seed(7);  // the dropout stream
  auto loss = m->loss(tokens.slice(1, 0, 37), targets, loss_chunk);
  loss.backward();
  StepResult r;
  r.loss = loss.item<double>();
  for (const auto& p : m->named_parameters()) {
    if (p.value().grad().defined()) r.grads[p.key()] = p.value().grad().clone();
  }
  r.next_random = torch::rand({4});
  return r;
}

void expect_same(const StepResult& want, const StepResult& got, const std::string& what) {
  EXPECT_NEAR(want.loss, got.loss, kTol) << what;
  ASSERT_EQ(want.grads.size(), got.grads.size()) << what;
  for (const auto& [name, g] : want.grads) {
    ASSERT_TRUE(got.grads.count(name)) << what << ": no gradient for " << name;
    EXPECT_LE(max_abs_diff(g, got.grads.at(name)), kTol) << what << ": " << name;
  }
  EXPECT_TRUE(want.next_random.equal(got.next_random)) << what << ": the recompute moved the generator";
}

const std::vector<std::pair<std::string, std::string>> kMixers = {
    {"full", "{type: full}"},
    {"sliding", "{type: sliding, window: 8, block: 8}"},
    {"linear", "{type: linear}"},
};

TEST(ActivationCheckpointing, MixerAndFullGiveThePlainGradients) {
  for (const auto& [name, mixer] : kMixers) {
    const ModelConfig cfg = model_of(mixer);
    const StepResult plain = run_step(cfg, Checkpointing::kNone, 0);
    ASSERT_GT(plain.grads.size(), 10u);
    expect_same(plain, run_step(cfg, Checkpointing::kMixer, 0), name + " mixer");
    expect_same(plain, run_step(cfg, Checkpointing::kFull, 0), name + " full");
  }
}

TEST(ActivationCheckpointing, HybridStackWithRmsNormAndRope) {
  const ModelConfig cfg = model_of("{type: full}", {"model.pattern=[linear, sliding]", "model.norm=rmsnorm",
                                                    "model.positions=rope", "model.mixers.sliding={type: sliding, window: 8, block: 8}"});
  const StepResult plain = run_step(cfg, Checkpointing::kNone, 0);
  expect_same(plain, run_step(cfg, Checkpointing::kMixer, 0), "hybrid mixer");
  expect_same(plain, run_step(cfg, Checkpointing::kFull, 0), "hybrid full");
}

TEST(ActivationCheckpointing, DropoutMasksDifferWithoutRestoringTheGenerator) {
  // Guards the test above: with dropout the loss depends on the stream, so an
  // unrestored generator in the recompute would have shown.
  const ModelConfig cfg = model_of("{type: full}");
  torch::manual_seed(0);
  LanguageModel m(cfg);
  m->train();
  const auto tokens = torch::randint(0, cfg.vocab_size, {1, 37}, torch::kInt64);
  const double a = m->loss(tokens, tokens).item<double>();
  const double b = m->loss(tokens, tokens).item<double>();
  EXPECT_NE(a, b);
}

TEST(ActivationCheckpointing, WithoutGradItIsThePlainForward) {
  const ModelConfig cfg = model_of("{type: sliding, window: 8, block: 8}", {"model.dropout=0"});
  torch::manual_seed(0);
  LanguageModel m(cfg);
  const auto tokens = torch::randint(0, cfg.vocab_size, {2, 37}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const auto plain = m->forward(tokens);
  m->set_checkpointing(Checkpointing::kFull);
  EXPECT_TRUE(plain.equal(m->forward(tokens)));
}

TEST(ActivationCheckpointing, ParseListsTheValidModes) {
  EXPECT_EQ(parse_checkpointing("mixer"), Checkpointing::kMixer);
  try {
    parse_checkpointing("selective");
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("none, mixer, full"), std::string::npos) << e.what();
  }
}

TEST(ChunkedCrossEntropy, EqualsThePlainLossAndGradients) {
  torch::manual_seed(3);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  for (int64_t chunk : {1, 5, 16, 37, 100}) {  // uneven last chunk, one chunk, chunk > N
    auto h = torch::randn({37, 8}, opts).requires_grad_();
    auto w = torch::randn({11, 8}, opts).requires_grad_();
    auto t = torch::randint(0, 11, {37}, torch::kInt64);
    t.index_put_({torch::indexing::Slice(3, 9)}, kIgnoreIndex);
    auto plain = torch::nn::functional::cross_entropy(torch::linear(h, w), t);
    auto gh = torch::autograd::grad({plain * 1.7}, {h, w});
    auto fused = chunked_cross_entropy(h, w, t, chunk);
    auto fh = torch::autograd::grad({fused * 1.7}, {h, w});  // a non-unit incoming gradient
    EXPECT_NEAR(plain.item<double>(), fused.item<double>(), kTol) << "chunk " << chunk;
    EXPECT_LE(max_abs_diff(gh[0], fh[0]), kTol) << "chunk " << chunk;
    EXPECT_LE(max_abs_diff(gh[1], fh[1]), kTol) << "chunk " << chunk;
    torch::NoGradGuard no_grad;
    EXPECT_NEAR(plain.item<double>(), chunked_cross_entropy(h, w, t, chunk).item<double>(), kTol);
  }
}

TEST(ChunkedCrossEntropy, AllIgnoredIsNaNAsThePlainPath) {
  auto h = torch::randn({4, 3}, torch::kFloat64).requires_grad_();
  auto w = torch::randn({5, 3}, torch::kFloat64);
  auto t = torch::full({4}, kIgnoreIndex, torch::kInt64);
  EXPECT_TRUE(std::isnan(torch::nn::functional::cross_entropy(torch::linear(h, w), t).item<double>()));
  EXPECT_TRUE(std::isnan(chunked_cross_entropy(h, w, t, 3).item<double>()));
}

TEST(ChunkedCrossEntropy, ModelLossTiedAndUntiedHeads) {
  for (const char* tie : {"true", "false"}) {
    const ModelConfig cfg = model_of("{type: full}", {std::string("model.tie_embeddings=") + tie});
    const StepResult plain = run_step(cfg, Checkpointing::kNone, 0);
    expect_same(plain, run_step(cfg, Checkpointing::kNone, 7), std::string("tie ") + tie + ", chunk 7");
    expect_same(plain, run_step(cfg, Checkpointing::kFull, 16), std::string("tie ") + tie + ", chunk 16 + full");
  }
}

TEST(ChunkedCrossEntropy, Bf16AutocastOnCpuCloseToThePlainPath) {
  // Under autocast both paths run the head's matmuls in bf16: they agree to
  // bf16 rounding of the logits, not bit for bit.
  torch::manual_seed(5);
  auto h = torch::randn({37, 16}).requires_grad_();
  auto w = (0.3 * torch::randn({29, 16})).requires_grad_();
  auto t = torch::randint(0, 29, {37}, torch::kInt64);
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
  at::autocast::set_autocast_dtype(c10::DeviceType::CPU, at::kBFloat16);
  auto plain = torch::nn::functional::cross_entropy(torch::linear(h, w).to(torch::kFloat32), t);
  auto fused = chunked_cross_entropy(h, w, t, 8);
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
  at::autocast::clear_cache();
  auto gp = torch::autograd::grad({plain}, {h, w});
  auto gf = torch::autograd::grad({fused}, {h, w});
  EXPECT_NEAR(plain.item<double>(), fused.item<double>(), 2e-3);
  // bf16 keeps 8 bits: 2^-8 = 0.4% of the largest gradient, doubled for the
  // two roundings (the plain path scales by 1/N before its cast, this one after).
  EXPECT_LE(max_abs_diff(gp[0], gf[0]), 1e-2 * gp[0].abs().max().item<double>());
  EXPECT_LE(max_abs_diff(gp[1], gf[1]), 1e-2 * gp[1].abs().max().item<double>());
}

}  // namespace
}  // namespace longtrain
