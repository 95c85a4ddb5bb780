// The language model: shapes, causality, position-table limit, mixer registry.
#include <gtest/gtest.h>

#include "model/lm.h"
#include "model/mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 50;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.max_positions = 64;
  return c;
}

TEST(LanguageModel, OutputShape) {
  torch::manual_seed(0);
  LanguageModel m(small_config());
  auto tokens = torch::randint(0, 50, {3, 17}, torch::kInt64);
  auto logits = m->forward(tokens);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 17, 50}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST(LanguageModel, TiedHeadSharesEmbedding) {
  auto cfg = small_config();
  LanguageModel tied(cfg);
  cfg.tie_embeddings = false;
  LanguageModel untied(cfg);
  EXPECT_EQ(untied->num_parameters() - tied->num_parameters(), 50 * 32);
}

// Changing token t must change no logit before t, and must change some at or after t.
void check_causal(const std::string& norm) {
  torch::manual_seed(1);
  auto cfg = small_config();
  cfg.norm = norm;
  LanguageModel m(cfg);
  m->eval();
  auto a = torch::randint(0, 50, {2, 24}, torch::kInt64);
  for (int64_t t : {0, 5, 23}) {
    auto b = a.clone();
    b.index_put_({torch::indexing::Slice(), t}, (a.index({torch::indexing::Slice(), t}) + 1) % 50);
    auto la = m->forward(a), lb = m->forward(b);
    auto diff = (la - lb).abs().amax({0, 2});  // [L]
    for (int64_t i = 0; i < t; ++i) {
      EXPECT_EQ(diff[i].item<float>(), 0.0f) << "position " << i << " saw token " << t;
    }
    EXPECT_GT(diff[t].item<float>(), 0.0f);
  }
}

TEST(LanguageModel, CausalLayerNorm) { check_causal("layernorm"); }
TEST(LanguageModel, CausalRmsNorm) { check_causal("rmsnorm"); }

TEST(LanguageModel, BidirectionalSeesTheFuture) {
  torch::manual_seed(2);
  auto cfg = small_config();
  cfg.causal = false;
  LanguageModel m(cfg);
  m->eval();
  auto a = torch::randint(0, 50, {1, 10}, torch::kInt64);
  auto b = a.clone();
  b.index_put_({0, 9}, (a.index({0, 9}) + 1) % 50);
  EXPECT_GT((m->forward(a) - m->forward(b)).index({0, 0}).abs().max().item<float>(), 0.0f);
}

// A mixer with parameters of its own and a length limit, registered like any other.
class ProbeMixerImpl : public MixerImpl {
 public:
  explicit ProbeMixerImpl(const MixerDims& dims) {
    proj_ = register_module("proj", torch::nn::Linear(dims.d_model, dims.d_model));
    table_ = register_parameter("table", torch::full({4, 4}, 0.5));
    rate_ = register_parameter("rate", torch::full({4}, 0.25));
  }
  torch::Tensor forward(const torch::Tensor& x, const MixerContext&) override {
    return proj_->forward(x) * rate_.sum() + table_.sum();
  }
  int64_t max_seq_len() const override { return 8; }
  torch::nn::Linear proj_{nullptr};
  torch::Tensor table_, rate_;
};
MixerRegistration probe_reg("test_probe", {[](Section&) { return std::make_shared<const MixerOptions>(); },
                                           [](const MixerOptions&, const MixerDims& d) -> Mixer {
                                             return std::make_shared<ProbeMixerImpl>(d);
                                           }});

ModelConfig probe_config() {
  auto cfg = small_config();
  cfg.mixer.type = "test_probe";
  cfg.mixer.options = std::make_shared<const MixerOptions>();
  return cfg;
}

// The model initialises Linear and Embedding layers (GPT-2 style) and leaves a
// mixer's own parameters as the mixer made them.
TEST(LanguageModel, InitKeepsMixerOwnParameters) {
  torch::manual_seed(0);
  LanguageModel m(probe_config());
  int64_t seen = 0;
  for (const auto& item : m->named_parameters()) {
    const auto& name = item.key();
    if (name.find(".table") != std::string::npos) {
      EXPECT_TRUE(torch::equal(item.value(), torch::full({4, 4}, 0.5))) << name << " was re-initialised";
      ++seen;
    } else if (name.find(".rate") != std::string::npos) {
      EXPECT_TRUE(torch::equal(item.value(), torch::full({4}, 0.25))) << name << " was re-initialised";
      ++seen;
    } else if (name.find("mixer.proj.weight") != std::string::npos) {
      // A residual output projection: std 0.02 / sqrt(2 * n_layers) = 0.01.
      EXPECT_NEAR(item.value().std().item<double>(), 0.01, 0.003) << name;
    } else if (name.find("mixer.proj.bias") != std::string::npos) {
      EXPECT_EQ(item.value().abs().max().item<float>(), 0.0f) << name;
    }
  }
  EXPECT_EQ(seen, 4);
}

TEST(LanguageModel, SequenceLongerThanAMixerAcceptsIsAnError) {
  auto cfg = probe_config();
  cfg.positions = "none";
  LanguageModel m(cfg);
  EXPECT_NO_THROW(m->forward(torch::zeros({1, 8}, torch::kInt64)));
  try {
    m->forward(torch::zeros({1, 9}, torch::kInt64));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds what layer 0's test_probe mixer accepts (8 positions"),
              std::string::npos)
        << e.what();
  }
}

TEST(LanguageModel, SequenceLongerThanPositionTableIsAnError) {
  LanguageModel m(small_config());
  auto tokens = torch::zeros({1, 65}, torch::kInt64);
  try {
    m->forward(tokens);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the position table"), std::string::npos);
  }
}

TEST(MixerRegistry, UnknownNameListsKnownOnes) {
  try {
    MixerRegistry::instance().get("no-such-mixer");
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("known mixers:"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("full"), std::string::npos);
  }
}

TEST(MixerRegistry, DuplicateNameRejected) {
  MixerEntry e = MixerRegistry::instance().get("full");
  EXPECT_THROW(MixerRegistry::instance().add("full", e), std::logic_error);
}

}  // namespace
}  // namespace longtrain

namespace longtrain {
namespace {

// Retrieval, not just local statistics: a 2-layer model learns to repeat a
// random sequence it saw earlier in its context (an induction-head task), so
// the second half's loss falls far below the uniform ln(16) = 2.77.
double copy_task_loss(const std::string& positions) {
  torch::manual_seed(3);
  ModelConfig cfg;
  cfg.vocab_size = 16;
  cfg.d_model = 64;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.max_positions = 64;
  cfg.positions = positions;
  LanguageModel m(cfg);
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0));
  double second_half = 0;
  for (int step = 0; step < 400; ++step) {
    auto half = torch::randint(0, 16, {16, 24}, torch::kInt64);
    auto seq = torch::cat({half, half}, 1);  // [16, 48]
    auto logits = m->forward(seq.slice(1, 0, 47));
    auto losses = torch::nn::functional::cross_entropy(
        logits.reshape({-1, 16}), seq.slice(1, 1, 48).reshape(-1),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone)).view({16, 47});
    opt.zero_grad();
    losses.mean().backward();
    opt.step();
    second_half = losses.slice(1, 24, 47).mean().item<double>();
  }
  return second_half;
}

TEST(LanguageModel, LearnsToCopyWithLearnedPositions) { EXPECT_LT(copy_task_loss("learned"), 0.5); }
TEST(LanguageModel, LearnsToCopyWithRope) { EXPECT_LT(copy_task_loss("rope"), 0.5); }

}  // namespace
}  // namespace longtrain
