// Linear attention (model/linear_attention.h) and the `linear` mixer: the
// chunked reference against the dense O(L²) one (outputs and every gradient,
// fp64), finite differences, the recurrent form, causality, feature maps,
// FAVOR+ redraws, fp32 accumulation under bf16, memory at L = 16384, and
// recipe errors.
#include <gtest/gtest.h>

#include <atomic>
#include <sstream>

#include "model/linear_attention.h"
#include "model/mixer.h"
#include "tests/model/gradcheck.h"
#include "trainer/cpu_memory.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/config.h"
#include "trainer/device.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

using torch::Tensor;
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

Tensor elu1(const Tensor& x) { return apply_feature_map(x, FeatureMapSpec{}); }

struct Case {
  int64_t L, chunk, dk, dv;
  bool causal, decay, normalize;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return "B2_H3_L" + std::to_string(c.L) + "_C" + std::to_string(c.chunk) + "_Dk" + std::to_string(c.dk) + "_Dv" +
         std::to_string(c.dv) + (c.causal ? "_causal" : "_bidir") + (c.decay ? "_decay" : "") +
         (c.normalize ? "_norm" : "_unnorm");
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int64_t L : {1, 7, 63, 64, 65, 130})
    for (int64_t chunk : {16, 64})
      for (auto [dk, dv] : {std::pair<int64_t, int64_t>{8, 8}, {8, 5}})
        for (bool causal : {true, false})
          for (bool decay : {false, true})
            for (bool normalize : {true, false}) cases.push_back({L, chunk, dk, dv, causal, decay, normalize});
  return cases;
}

class LinearAttentionVsNaive : public ::testing::TestWithParam<Case> {};

TEST_P(LinearAttentionVsNaive, OutputsAndGradientsMatch) {
  const Case c = GetParam();
  torch::manual_seed(c.L * 131 + c.chunk + c.dv);
  auto q = torch::randn({2, 3, c.L, c.dk}, kF64).requires_grad_();
  auto k = torch::randn({2, 3, c.L, c.dk}, kF64).requires_grad_();
  auto v = torch::randn({2, 3, c.L, c.dv}, kF64).requires_grad_();
  // One head without decay (γ = 1) next to two decaying ones.
  auto decay = torch::tensor({0.8, 0.95, 1.0}, kF64).requires_grad_();
  LinearAttentionOptions o;
  o.causal = c.causal;
  o.chunk = c.chunk;
  o.normalize = c.normalize;
  if (c.decay) o.decay = decay;
  std::vector<Tensor> wrt = {q, k, v};
  std::vector<std::string> names = {"q", "k", "v"};
  if (c.decay) {
    wrt.push_back(decay);
    names.push_back("decay");
  }
  auto grad_out = torch::randn({2, 3, c.L, c.dv}, kF64);
  auto chunked = linear_attention_chunked(elu1(q), elu1(k), v, o);
  auto naive = linear_attention_naive(elu1(q), elu1(k), v, o);
  auto g_chunked = torch::autograd::grad({chunked}, wrt, {grad_out});
  auto g_naive = torch::autograd::grad({naive}, wrt, {grad_out});
  // fp64 through two summation orders: agreement to ~1e-13 relative; 1e-10
  // leaves room for L = 130 unnormalised sums without hiding a wrong term.
  auto expect_close = [&](const Tensor& got, const Tensor& ref, const std::string& what) {
    const double scale = std::max(1.0, ref.abs().max().item<double>());
    EXPECT_LE(max_abs_diff(got, ref), 1e-10 * scale)
        << what << " of " << case_name({c, 0}) << ": max abs diff " << max_abs_diff(got, ref) << " (scale " << scale << ")";
  };
  ASSERT_EQ(chunked.sizes(), naive.sizes());
  expect_close(chunked, naive, "output");
  for (size_t i = 0; i < wrt.size(); ++i) expect_close(g_chunked[i], g_naive[i], "grad " + names[i]);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearAttentionVsNaive, ::testing::ValuesIn(all_cases()), case_name);

void gradcheck_chunked(bool causal) {
  torch::manual_seed(5);
  auto q = torch::randn({1, 2, 5, 3}, kF64).requires_grad_();
  auto k = torch::randn({1, 2, 5, 3}, kF64).requires_grad_();
  auto v = torch::randn({1, 2, 5, 3}, kF64).requires_grad_();
  auto decay = torch::tensor({0.6, 0.9}, kF64).requires_grad_();
  expect_gradcheck(
      [causal](const std::vector<Tensor>& in) {
        LinearAttentionOptions o;
        o.causal = causal;
        o.chunk = 2;
        o.decay = in[3];
        return linear_attention_chunked(elu1(in[0]), elu1(in[1]), in[2], o);
      },
      {q, k, v, decay});
}

TEST(LinearAttentionGradcheck, ChunkedCausalWithDecay) { gradcheck_chunked(true); }
TEST(LinearAttentionGradcheck, ChunkedBidirectionalWithDecay) { gradcheck_chunked(false); }

TEST(LinearAttentionRecurrent, StepEqualsChunkedTokenByToken) {
  torch::manual_seed(6);
  const int64_t B = 2, H = 3, L = 11, F = 6, Dv = 4;
  auto pq = elu1(torch::randn({B, H, L, F}, kF64)), pk = elu1(torch::randn({B, H, L, F}, kF64));
  auto v = torch::randn({B, H, L, Dv}, kF64);
  for (bool normalize : {true, false}) {
    LinearAttentionOptions o;
    o.chunk = 4;
    o.normalize = normalize;
    o.decay = torch::tensor({0.7, 0.9, 1.0}, kF64);
    auto ref = linear_attention_chunked(pq, pk, v, o);
    auto state = linear_attention_initial_state(B, H, F, Dv, kF64);
    for (int64_t t = 0; t < L; ++t) {
      auto o_t = linear_attention_step(pq.narrow(2, t, 1), pk.narrow(2, t, 1), v.narrow(2, t, 1), state, o);
      EXPECT_LE(max_abs_diff(o_t, ref.narrow(2, t, 1)), 1e-12) << "token " << t << ", normalize " << normalize;
    }
  }
}

// Builds a `linear` mixer through the recipe path (so option parsing is tested too).
Mixer make_linear(const std::vector<std::string>& options, bool causal = true, int64_t layer = 0) {
  std::vector<std::string> overrides = {"model.mixer.type=linear"};
  for (const auto& o : options) overrides.push_back("model.mixer." + o);
  MixerDims d;
  d.d_model = 32;
  d.n_heads = 4;
  d.layer = layer;
  d.n_layers = 2;
  d.max_positions = 64;
  d.causal = causal;
  return build_mixer(load_recipe("", overrides).model.mixer, d);
}

TEST(LinearMixer, CausalForEveryFeatureMap) {
  for (const auto& map : feature_map_names()) {
    SCOPED_TRACE("feature_map " + map);
    torch::manual_seed(7);
    auto m = make_linear({"feature_map=" + map, "decay=learned", "chunk=4"});
    m->eval();
    auto x = torch::randn({2, 23, 32});
    auto y = m->forward(x, {});
    for (int64_t t : {0, 5, 22}) {
      auto x2 = x.clone();
      x2.select(1, t).add_(torch::randn({2, 32}));
      auto diff = (m->forward(x2, {}) - y).abs().amax({0, 2});  // [L]
      for (int64_t i = 0; i < t; ++i) EXPECT_EQ(diff[i].item<float>(), 0.0f) << "position " << i << " saw token " << t;
      EXPECT_GT(diff[t].item<float>(), 0.0f) << "token " << t << " did not see itself";
    }
  }
}

TEST(LinearMixer, EveryFeatureMapRunsForwardAndBackward) {
  for (const auto& map : feature_map_names())
    for (bool causal : {true, false})
      for (const char* decay : {"none", "fixed", "learned"}) {
        SCOPED_TRACE(map + (causal ? " causal " : " bidirectional ") + decay);
        torch::manual_seed(8);
        auto m = make_linear({"feature_map=" + map, std::string("decay=") + decay, "chunk=8"}, causal);
        m->train();
        auto x = torch::randn({2, 19, 32}, torch::requires_grad());
        auto y = m->forward(x, {});
        ASSERT_EQ(y.sizes(), x.sizes());
        ASSERT_TRUE(torch::isfinite(y).all().item<bool>());
        y.pow(2).mean().backward();
        for (const auto& p : m->named_parameters()) {
          ASSERT_TRUE(p.value().grad().defined()) << p.key();
          EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
          if (p.key() == "qkv.weight" || p.key() == "decay_logit") {
            EXPECT_GT(p.value().grad().abs().max().item<double>(), 0.0) << p.key() << " gets no gradient";
          }
        }
        EXPECT_EQ(m->named_parameters().contains("decay_logit"), std::string(decay) == "learned");
      }
}

TEST(LinearAttentionFavor, PositiveDeterministicOrthogonalUnbiased) {
  auto w = favor_projection(20, 8, 7, 0);
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{20, 8}));
  EXPECT_TRUE(torch::equal(w, favor_projection(20, 8, 7, 0))) << "same (seed, draw) must give the same draw";
  EXPECT_FALSE(torch::equal(w, favor_projection(20, 8, 7, 1))) << "a redraw must change the projection";
  EXPECT_FALSE(torch::equal(w, favor_projection(20, 8, 8, 0))) << "another seed must change the projection";
  auto block = w.narrow(0, 0, 8).to(torch::kFloat64);
  auto gram = block.mm(block.t());  // [8, 8]
  EXPECT_LE((gram - torch::diag(torch::diag(gram))).abs().max().item<double>(), 1e-4 * gram.diag().max().item<double>())
      << "rows of one block must be orthogonal";

  torch::manual_seed(9);
  FeatureMapSpec spec{FeatureMap::kFavor, w, 0};
  auto phi = apply_feature_map(torch::randn({2, 3, 10, 8}) * 2, spec);
  ASSERT_EQ(phi.size(-1), 20);
  EXPECT_GT(phi.min().item<float>(), 0.0f);

  // φ(q)·φ(k) estimates exp(q·k); with m = 8192 features the estimate is
  // within ~2% for |q|, |k| ~ 0.5. Orthogonal blocks from QR without the sign
  // fix of diag(R) are biased by 7-14% here; a wrong scale or sign is far off.
  spec.favor_proj = favor_projection(8192, 8, 3, 0);
  auto q = torch::randn({1, 1, 4, 8}) * 0.2, k = torch::randn({1, 1, 4, 8}) * 0.2;
  auto est = torch::matmul(apply_feature_map(q, spec), apply_feature_map(k, spec).transpose(-1, -2));
  auto exact = torch::exp(torch::matmul(q, k.transpose(-1, -2)));
  EXPECT_LE(((est - exact).abs() / exact).max().item<float>(), 0.05f);
}

TEST(LinearMixer, FavorRedrawsOnlyAtTheIntervalAndCheckpointsTheDraw) {
  auto m = make_linear({"feature_map=favor", "redraw_interval=3", "seed=5"}, true, /*layer=*/1);
  auto proj = m->named_buffers()["favor_proj"];
  EXPECT_TRUE(torch::equal(proj, favor_projection(8, 8, 5 + 1, 0))) << "layer l draws from seed + l";
  m->train();
  auto x = torch::randn({1, 6, 32});
  for (int n = 0; n < 7; ++n) {
    auto before = proj.clone();
    m->forward(x, {});
    EXPECT_EQ(!torch::equal(proj, before), n > 0 && n % 3 == 0) << "training forward " << n;
  }
  EXPECT_TRUE(torch::equal(proj, favor_projection(8, 8, 6, 2)));
  m->eval();
  auto before = proj.clone();
  m->forward(x, {});
  EXPECT_TRUE(torch::equal(proj, before)) << "evaluation must not advance the redraw schedule";

  std::stringstream stream;
  torch::serialize::OutputArchive out;
  m->save(out);
  out.save_to(stream);
  auto restored = make_linear({"feature_map=favor", "redraw_interval=3", "seed=5"}, true, 1);
  torch::serialize::InputArchive in;
  in.load_from(stream);
  restored->load(in);
  EXPECT_TRUE(torch::equal(restored->named_buffers()["favor_proj"], proj));
  EXPECT_EQ(restored->named_buffers()["favor_calls"].item<int64_t>(), 7);
  EXPECT_EQ(restored->named_buffers()["favor_draws"].item<int64_t>(), 2);
}

TEST(LinearAttentionPrecision, Bf16InputsAndAutocastAccumulateInFp32) {
  torch::manual_seed(10);
  const int64_t L = 2048;
  LinearAttentionOptions o;
  o.normalize = false;  // the raw sums over up to L terms: where bf16 accumulation shows
  auto pq = elu1(torch::randn({1, 2, L, 16})).to(torch::kBFloat16);
  auto pk = elu1(torch::randn({1, 2, L, 16})).to(torch::kBFloat16);
  auto v = torch::randn({1, 2, L, 16}).to(torch::kBFloat16);
  auto ref = linear_attention_chunked(pq.to(torch::kFloat32), pk.to(torch::kFloat32), v.to(torch::kFloat32), o);
  auto got = linear_attention_chunked(pq, pk, v, o);
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  // Only the final rounding to bf16 (relative 2^-9) may separate them.
  auto excess = (got.to(torch::kFloat32) - ref).abs() - ref.abs() * std::ldexp(1.0, -8) - 1e-3;
  EXPECT_LE(excess.max().item<float>(), 0.0f) << "bf16 inputs were not accumulated in fp32";

  AutocastGuard autocast(torch::Device(torch::kCPU), true);
  auto under_autocast = linear_attention_chunked(pq.to(torch::kFloat32), pk.to(torch::kFloat32), v.to(torch::kFloat32), o);
  EXPECT_EQ(under_autocast.scalar_type(), torch::kFloat32);
  EXPECT_LE(max_abs_diff(under_autocast, ref), 1e-3 * ref.abs().max().item<double>()) << "autocast leaked into the scan";
}

TEST(LinearAttentionMemory, CausalChunkedAtL16384NeverHoldsAnLxLMatrix) {
  const int64_t L = 16384, D = 32;
  torch::manual_seed(11);
  auto q = torch::randn({1, 1, L, D}).requires_grad_(), k = torch::randn({1, 1, L, D}).requires_grad_();
  auto v = torch::randn({1, 1, L, D}).requires_grad_();
  LinearAttentionOptions o;
  o.decay = torch::tensor({0.99f});
  const int64_t peak = peak_cpu_bytes([&] {
    auto y = linear_attention_chunked(elu1(q), elu1(k), v, o);
    y.pow(2).sum().backward();
  });
  // One L×L fp32 matrix is 1 GiB. The chunked scan holds O(L·(C + D)) values:
  // inputs, grads, features and the C×C blocks of every chunk for backward —
  // 29 MiB measured. 64 MiB allows that twice over and is a sixteenth of one
  // L×L matrix, so any dense L×L intermediate fails.
  EXPECT_GT(peak, L * D * 4) << "the allocator saw nothing; the measurement is broken";
  EXPECT_LT(peak, int64_t{64} << 20) << "peak " << (peak >> 20) << " MiB at L = " << L;
  EXPECT_TRUE(q.grad().defined() && k.grad().defined() && v.grad().defined());
}

std::string recipe_error(const std::vector<std::string>& options) {
  std::vector<std::string> overrides = {"model.mixer.type=linear"};
  for (const auto& o : options) overrides.push_back("model.mixer." + o);
  return recipe_error_of(overrides);
}

TEST(LinearMixer, BadConfigsAreClearErrors) {
  auto has = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  auto e = recipe_error({"feature_map=nope"});
  EXPECT_TRUE(has(e, "model.mixer.feature_map") && has(e, "'nope'") && has(e, "elu+1, relu, favor, cosformer")) << e;
  e = recipe_error({"chunk=0"});
  EXPECT_TRUE(has(e, "model.mixer.chunk") && has(e, "must be > 0")) << e;
  e = recipe_error({"eps=0"});
  EXPECT_TRUE(has(e, "model.mixer.eps") && has(e, "must be > 0")) << e;
  e = recipe_error({"decay=sometimes"});
  EXPECT_TRUE(has(e, "model.mixer.decay") && has(e, "none, fixed, learned")) << e;
  e = recipe_error({"decay=learned", "decay_init=1"});
  EXPECT_TRUE(has(e, "model.mixer.decay_init") && has(e, "(0, 1)")) << e;
  e = recipe_error({"decay=fixed", "decay_init=fast"});
  EXPECT_TRUE(has(e, "model.mixer.decay_init") && has(e, "neither 'retnet' nor a number")) << e;
  e = recipe_error({"seed=3"});
  EXPECT_TRUE(has(e, "model.mixer.seed") && has(e, "only applies to feature_map: favor")) << e;
  e = recipe_error({"chunks=3"});
  EXPECT_TRUE(has(e, "chunks")) << e;
  EXPECT_EQ(recipe_error({"feature_map=favor", "favor_features=16", "redraw_interval=100", "decay=fixed"}), "");
}

}  // namespace
}  // namespace longtrain
