// AFT math (model/aft.h) against its definition: every variant's fast reference
// path vs aft_naive on the same dense [H, L, L] bias — outputs and the gradients
// of q, k, v and of the bias parameters, in fp64 — and an fp64 finite-difference
// gradcheck of each variant. Lengths include 1, odd lengths, lengths that are
// not a multiple of the window or of the scan's chunk (16), and one long case
// (300: two levels of the chunked scan).
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "model/aft.h"
#include "tests/model/gradcheck.h"

namespace longtrain {
namespace {

enum class Variant { kSimple, kLocal, kConv, kFull, kFullFactorised };

const char* name(Variant v) {
  switch (v) {
    case Variant::kSimple: return "simple";
    case Variant::kLocal: return "local";
    case Variant::kConv: return "conv";
    case Variant::kFull: return "full";
    case Variant::kFullFactorised: return "full-rank3";
  }
  return "?";
}

constexpr int64_t kConvHeads = 3, kRank = 3;

bool banded(Variant v) { return v == Variant::kLocal || v == Variant::kConv; }

// The bias parameters of a variant, fp64, requiring grad. Conv's gain and shift
// are random (not the zero initialisation) so that gradients reach every one.
std::vector<torch::Tensor> make_params(Variant v, bool causal, int64_t window, int64_t positions) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t taps = aft_num_taps(window, causal);
  std::vector<torch::Tensor> p;
  switch (v) {
    case Variant::kSimple: break;
    case Variant::kLocal: p = {torch::randn({taps}, opts) * 2}; break;
    case Variant::kConv:
      p = {torch::randn({kConvHeads, taps}, opts), torch::randn({kConvHeads}, opts) * 2,
           torch::randn({kConvHeads}, opts)};
      break;
    case Variant::kFull: p = {torch::randn({positions, positions}, opts) * 2}; break;
    case Variant::kFullFactorised:
      p = {torch::randn({positions, kRank}, opts), torch::randn({positions, kRank}, opts)};
      break;
  }
  for (auto& t : p) t.requires_grad_(true);
  return p;
}

torch::Tensor run_fast(Variant v, bool causal, int64_t window, const std::vector<torch::Tensor>& in) {
  const auto &q = in[0], &k = in[1], &x = in[2];
  switch (v) {
    case Variant::kSimple: return aft_simple(q, k, x, causal);
    case Variant::kLocal: return aft_local(q, k, x, in[3], window, causal);
    case Variant::kConv: return aft_conv(q, k, x, aft_conv_kernel(in[3], in[4], in[5]), window, causal);
    case Variant::kFull: return aft_full(q, k, x, in[3], causal);
    case Variant::kFullFactorised: return aft_full(q, k, x, aft_full_bias(in[3], in[4], q.size(1)), causal);
  }
  return {};
}

// The same bias as a dense [H, L, L] matrix, built without the fast path's code.
torch::Tensor dense_bias(Variant v, bool causal, int64_t window, int64_t L, const std::vector<torch::Tensor>& in) {
  switch (v) {
    case Variant::kSimple: return torch::zeros({1, L, L}, torch::kFloat64);
    case Variant::kLocal: return aft_relative_bias_dense(in[3].unsqueeze(0), L, window, causal);
    case Variant::kConv:
      return aft_relative_bias_dense(aft_conv_kernel(in[3], in[4], in[5]), L, window, causal);
    case Variant::kFull: return in[3].narrow(0, 0, L).narrow(1, 0, L).unsqueeze(0);
    case Variant::kFullFactorised:
      return torch::matmul(in[3].narrow(0, 0, L), in[4].narrow(0, 0, L).t()).unsqueeze(0);
  }
  return {};
}

std::vector<torch::Tensor> grads(const torch::Tensor& out, const torch::Tensor& grad_out,
                                 const std::vector<torch::Tensor>& in) {
  return torch::autograd::grad({(out * grad_out).sum()}, in, {}, false, false, /*allow_unused=*/true);
}

// Fast path == definition, outputs and every gradient, for one configuration.
void expect_matches_naive(Variant v, bool causal, int64_t L, int64_t window) {
  constexpr int64_t B = 2, d = 12, kPositions = 320;
  std::ostringstream id;
  id << name(v) << (causal ? " causal" : " bidirectional") << " B" << B << "-L" << L << "-D" << d;
  if (banded(v)) id << "-S" << window;
  SCOPED_TRACE(id.str());
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  // Keys spread over ~e^±10 so that the shifts and rescalings matter.
  std::vector<torch::Tensor> in = {torch::randn({B, L, d}, opts), torch::randn({B, L, d}, opts) * 3,
                                   torch::randn({B, L, d}, opts)};
  for (auto& t : in) t.requires_grad_(true);
  for (auto& p : make_params(v, causal, window, kPositions)) in.push_back(p);

  auto fast = run_fast(v, causal, window, in);
  auto naive = aft_naive(in[0], in[1], in[2], dense_bias(v, causal, window, L, in), causal);
  ASSERT_EQ(fast.sizes(), naive.sizes());
  // fp64 throughout: both sides are exact to ~1e-15; 1e-10 leaves room for
  // different summation orders and still catches any wrong term (O(1e-2) or more).
  EXPECT_LT(max_abs_diff(fast, naive), 1e-10) << "output";
  auto grad_out = torch::randn_like(fast);
  auto gf = grads(fast, grad_out, in), gn = grads(naive, grad_out, in);
  const char* names[] = {"q", "k", "v", "bias param 0", "bias param 1", "bias param 2"};
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_TRUE(gn[i].defined()) << "no gradient for " << names[i];
    ASSERT_TRUE(gf[i].defined()) << "fast path gives no gradient for " << names[i];
    EXPECT_LT(max_abs_diff(gf[i], gn[i]), 1e-9) << "gradient of " << names[i];
  }
}

void check_variant(Variant v) {
  torch::manual_seed(11);
  for (bool causal : {true, false}) {
    for (int64_t L : {1, 7, 63, 64, 65, 300}) {
      if (banded(v)) {
        for (int64_t window : {4, 16}) expect_matches_naive(v, causal, L, window);
      } else {
        expect_matches_naive(v, causal, L, 0);
      }
    }
  }
}

TEST(AftVariants, SimpleMatchesNaive) { check_variant(Variant::kSimple); }
TEST(AftVariants, LocalMatchesNaive) { check_variant(Variant::kLocal); }
TEST(AftVariants, ConvMatchesNaive) { check_variant(Variant::kConv); }
TEST(AftVariants, FullMatchesNaive) { check_variant(Variant::kFull); }
TEST(AftVariants, FullFactorisedMatchesNaive) { check_variant(Variant::kFullFactorised); }

// A window longer than the sequence is all band: local with window >= L is the
// full pairwise bias w_{t,t'} = u[t−t'] everywhere.
TEST(AftVariants, WindowLongerThanSequence) {
  torch::manual_seed(12);
  expect_matches_naive(Variant::kLocal, true, 5, 16);
  expect_matches_naive(Variant::kLocal, false, 5, 16);
}

// The naive reference itself, on a case worked by hand: L = 2, d = 1, causal,
// w = 0: y_0 = σ(q_0) v_0, y_1 = σ(q_1) (e^{k0} v0 + e^{k1} v1) / (e^{k0} + e^{k1}).
TEST(AftVariants, NaiveMatchesHandComputation) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto q = torch::tensor({0.3, -1.0}, opts).view({1, 2, 1});
  auto k = torch::tensor({0.5, 2.0}, opts).view({1, 2, 1});
  auto v = torch::tensor({1.5, -4.0}, opts).view({1, 2, 1});
  auto y = aft_naive(q, k, v, torch::zeros({1, 2, 2}, opts), true).flatten();
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const double y1 = sig(-1.0) * (std::exp(0.5) * 1.5 + std::exp(2.0) * -4.0) / (std::exp(0.5) + std::exp(2.0));
  EXPECT_NEAR(y[0].item<double>(), sig(0.3) * 1.5, 1e-14);
  EXPECT_NEAR(y[1].item<double>(), y1, 1e-14);
}

TEST(AftVariants, DenseRelativeBiasLayout) {
  auto u = torch::arange(1, 4, torch::kFloat64).view({1, 3});  // taps 1, 2, 3
  // Causal window 3: w[t, t'] = u[t − t'] for 0 <= t − t' < 3, else 0.
  auto c = aft_relative_bias_dense(u, 4, 3, true)[0];
  auto expect_c = torch::tensor({{1, 0, 0, 0}, {2, 1, 0, 0}, {3, 2, 1, 0}, {0, 3, 2, 1}}, torch::kFloat64);
  EXPECT_TRUE(torch::equal(c, expect_c)) << c;
  // Bidirectional window 2: taps index t − t' + 1, |t − t'| < 2.
  auto b = aft_relative_bias_dense(u, 4, 2, false)[0];
  auto expect_b = torch::tensor({{2, 1, 0, 0}, {3, 2, 1, 0}, {0, 3, 2, 1}, {0, 0, 3, 2}}, torch::kFloat64);
  EXPECT_TRUE(torch::equal(b, expect_b)) << b;
}

TEST(AftVariants, ConvKernelIsThePapersStandardisation) {
  torch::manual_seed(13);
  auto raw = torch::randn({2, 5}, torch::kFloat64);
  auto gain = torch::tensor({0.5, -2.0}, torch::kFloat64), shift = torch::tensor({1.0, 0.25}, torch::kFloat64);
  auto got = aft_conv_kernel(raw, gain, shift);
  for (int64_t h = 0; h < 2; ++h) {
    auto r = raw[h];
    auto want = gain[h] * (r - r.mean()) / torch::sqrt(r.var(/*unbiased=*/false) + 1e-5) + shift[h];
    EXPECT_LT(max_abs_diff(got[h], want), 1e-12) << "head " << h;
  }
  auto zero = torch::zeros({2}, torch::kFloat64);
  EXPECT_EQ(aft_conv_kernel(raw, zero, zero).abs().max().item<double>(), 0.0) << "paper init is w = 0";
}

// fp64 finite differences on tiny shapes; the second length crosses the scan's
// chunk of 16 so its carry path is differentiated too.
void gradcheck_variant(Variant v, int64_t L, int64_t d) {
  for (bool causal : {true, false}) {
    SCOPED_TRACE(std::string(name(v)) + (causal ? " causal" : " bidirectional") + " L" + std::to_string(L));
    torch::manual_seed(14);
    auto opts = torch::TensorOptions().dtype(torch::kFloat64);
    const int64_t window = 2;
    std::vector<torch::Tensor> in = {torch::randn({1, L, d}, opts), torch::randn({1, L, d}, opts) * 2,
                                     torch::randn({1, L, d}, opts)};
    for (auto& t : in) t.requires_grad_(true);
    for (auto& p : make_params(v, causal, window, L + 1)) in.push_back(p);
    expect_gradcheck([&](const std::vector<torch::Tensor>& x) { return run_fast(v, causal, window, x); }, in);
  }
}

TEST(AftGradcheck, Simple) { gradcheck_variant(Variant::kSimple, 5, 3); }
TEST(AftGradcheck, SimpleAcrossScanChunks) { gradcheck_variant(Variant::kSimple, 37, 2); }
TEST(AftGradcheck, Local) { gradcheck_variant(Variant::kLocal, 5, 3); }
TEST(AftGradcheck, LocalAcrossScanChunks) { gradcheck_variant(Variant::kLocal, 37, 2); }
TEST(AftGradcheck, Conv) { gradcheck_variant(Variant::kConv, 5, 3); }
TEST(AftGradcheck, Full) { gradcheck_variant(Variant::kFull, 5, 3); }
TEST(AftGradcheck, FullFactorised) { gradcheck_variant(Variant::kFullFactorised, 5, 3); }

}  // namespace
}  // namespace longtrain
