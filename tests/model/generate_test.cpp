// Generation: each mixer's incremental form (KV cache, sliding ring buffer,
// linear/AFT recurrent state) gives the same logits as the full forward at
// every position, and generate() with the cache produces the same greedy and
// seeded-sampled tokens as recomputing the full forward each step. Models are
// tiny and random; init_std is raised so that logits are not all near-equal
// (an argmax between near-ties would make the token test flaky, not stricter).
#include <gtest/gtest.h>

#include <set>

#include "model/generate.h"
#include "model/lm.h"
#include "tests/trainer/test_recipes.h"

namespace longtrain {
namespace {

struct Case {
  std::string name;
  std::vector<std::string> sets;
};

std::vector<Case> stepping_cases() {
  return {
      {"full-learned", {"model.mixer={type: full}"}},
      {"full-rope", {"model.mixer={type: full}", "model.positions=rope"}},
      // Windows shorter than the sequence, different per head, so the ring buffer wraps.
      {"sliding-per-head", {"model.mixer={type: sliding, window: [[3, 5], [7, 4]], block: 4}"}},
      {"sliding-rope", {"model.mixer={type: sliding, window: 6, block: 8}", "model.positions=rope"}},
      {"linear-elu", {"model.mixer={type: linear, chunk: 8}"}},
      {"linear-decay-learned", {"model.mixer={type: linear, decay: learned, chunk: 4}"}},
      {"linear-favor", {"model.mixer={type: linear, feature_map: favor, favor_features: 12}"}},
      {"linear-cosformer", {"model.mixer={type: linear, feature_map: cosformer}"}},
      {"aft-simple", {"model.mixer={type: aft, variant: simple}", "model.positions=none"}},
      {"hybrid-linear-full", {"model.n_layers=4", "model.pattern=[linear x3, full]"}},
  };
}

LanguageModel tiny_model(const std::vector<std::string>& extra, uint64_t seed) {
  std::vector<std::string> sets = {"model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                                   "model.max_positions=64", "model.init_std=0.2", "train.seq_len=48"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  Recipe r = load_recipe("", sets);
  r.model.vocab_size = 40;
  torch::manual_seed(seed);
  LanguageModel m(r.model);
  m->eval();
  return m;
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(Generate, StepLogitsEqualTheFullForward) {
  for (const auto& c : stepping_cases()) {
    SCOPED_TRACE(c.name);
    auto m = tiny_model(c.sets, 3);
    ASSERT_EQ(m->step_unsupported(), "");
    torch::NoGradGuard no_grad;
    const int64_t B = 2, L = 37;  // odd length, beyond every window
    auto tokens = torch::randint(0, 40, {B, L}, torch::kInt64);
    auto full = m->forward(tokens);  // [B, L, V]
    LmState state = m->initial_state(B);
    double err = 0;
    for (int64_t t = 0; t < L; ++t) err = std::max(err, max_abs(m->step(tokens.select(1, t), state), full.select(1, t)));
    // fp32 with O(1) logits: the two paths differ only in summation order.
    EXPECT_LT(err, 1e-5);
    EXPECT_EQ(state.position, L);
  }
}

TEST(Generate, CachedEqualsRecomputedGreedyAndSampled) {
  std::vector<SamplingOptions> samplings(4);
  samplings[0].temperature = 0;  // greedy
  samplings[1].seed = 11;        // plain sampling at temperature 1
  samplings[2].seed = 12;
  samplings[2].top_k = 5;
  samplings[2].temperature = 0.7;
  samplings[3].seed = 13;
  samplings[3].top_p = 0.8;
  for (const auto& c : stepping_cases()) {
    auto m = tiny_model(c.sets, 5);
    for (size_t s = 0; s < samplings.size(); ++s) {
      SCOPED_TRACE(c.name + " sampling " + std::to_string(s));
      GenerateOptions o;
      o.max_new_tokens = 30;
      o.sampling = samplings[s];
      o.keep_logits = true;
      const std::vector<int64_t> prompt = {1, 7, 3, 9, 2};
      auto cached = generate(m, prompt, o);
      o.use_cache = false;
      auto recomputed = generate(m, prompt, o);
      EXPECT_TRUE(cached.used_cache);
      EXPECT_FALSE(recomputed.used_cache);
      EXPECT_EQ(cached.tokens, recomputed.tokens);
      ASSERT_EQ(cached.logits.sizes(), recomputed.logits.sizes());
      EXPECT_LT(max_abs(cached.logits, recomputed.logits), 1e-5);
    }
  }
}

TEST(Generate, MixersWithoutAStepFormFallBackAndSaySo) {
  const std::vector<Case> cases = {
      {"bigbird", {"model.mixer={type: bigbird, block: 4, window_blocks: 3, global_blocks: 1, random_blocks: 1}"}},
      {"sliding-dilated", {"model.mixer={type: sliding, window: 4, dilation: 2, block: 4}"}},
      {"sliding-global", {"model.mixer={type: sliding, window: 4, block: 4, global_first: 2}"}},
      {"aft-local", {"model.mixer={type: aft, variant: local, window: 4}", "model.positions=none"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto m = tiny_model(c.sets, 7);
    EXPECT_NE(m->step_unsupported(), "");
    GenerateOptions o;
    o.max_new_tokens = 5;
    o.sampling.temperature = 0;
    auto r = generate(m, {1, 2, 3}, o);
    EXPECT_FALSE(r.used_cache);
    EXPECT_NE(r.fallback.find("layer 0"), std::string::npos) << r.fallback;
    EXPECT_EQ(r.tokens.size(), 5u);
  }
}

TEST(Generate, SamplerRespectsTopKTopPAndIsSeeded) {
  auto logits = torch::tensor({0.0, 3.0, 2.0, 1.0, -1.0});
  SamplingOptions greedy;
  greedy.temperature = 0;
  EXPECT_EQ(sample_token(logits, greedy, 0), 1);
  SamplingOptions top1;
  top1.top_k = 1;
  for (int64_t d = 0; d < 20; ++d) EXPECT_EQ(sample_token(logits, top1, d), 1);
  SamplingOptions top2;
  top2.top_k = 2;
  std::set<int64_t> seen;
  for (int64_t d = 0; d < 200; ++d) seen.insert(sample_token(logits, top2, d));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2}));
  // p = softmax: token 1 holds 0.64 of the mass; top_p 0.5 keeps only it.
  SamplingOptions nucleus;
  nucleus.top_p = 0.5;
  for (int64_t d = 0; d < 20; ++d) EXPECT_EQ(sample_token(logits, nucleus, d), 1);
  // Same seed and draw, same token; frequencies follow the softmax.
  SamplingOptions plain;
  plain.seed = 99;
  EXPECT_EQ(sample_token(logits, plain, 5), sample_token(logits, plain, 5));
  int64_t ones = 0;
  const int64_t n = 4000;
  for (int64_t d = 0; d < n; ++d) ones += sample_token(logits, plain, d) == 1;
  const double p1 = torch::softmax(logits, 0)[1].item<double>();
  EXPECT_NEAR(static_cast<double>(ones) / n, p1, 0.03);
}

}  // namespace
}  // namespace longtrain
