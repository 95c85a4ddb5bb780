// Chunked causal linear attention (kernels/linear_attention) against the
// references, output and every gradient (φq, φk, v; the kernel takes the
// decay as a constant and refuses one that requires grad), by the rule
//   err(kernel, ref_fp64) <= 2 * err(ref_bf16, ref_fp64) + atol
// where ref_fp64 is the model's linear_attention_chunked in fp64 on the same
// (bf16-rounded) inputs and ref_bf16 the same math written plainly in bf16
// (what a PyTorch user gets running it in bf16). Odd lengths, lengths around
// the 64-row sub-chunk and the 256-row block, B > 1, H > 1, head dims 64 and
// 128, decay none / fixed, with and without the normaliser; outputs
// poisoned with NaN before every kernel run, each case run twice. The
// recurrent step kernel equals the chunked kernel token by token, and the
// `linear` mixer takes the kernel under bf16 autocast and matches impl: reference.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "kernels/linear_attention/op.h"
#include "kernels/linear_attention/params.h"
#include "kernels/swizzle.h"
#include "model/linear_attention.h"
#include "model/mixer.h"
#include "trainer/device.h"
#include "trainer/recipe_section.h"
#include "tests/kernels/max_err.h"

namespace longtrain {
namespace {

using torch::Tensor;

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

TEST(LinearKernel, SaysWhyItCannotRun) {
  EXPECT_NE(kernels::linear_attention_kernel_unsupported(torch::zeros({1, 1, 8, 64}), 64), "");
  if (!torch::cuda::is_available()) return;
  auto on = [](torch::ScalarType t, int64_t d) { return torch::zeros({1, 1, 8, d}, torch::dtype(t).device(torch::kCUDA)); };
  EXPECT_NE(kernels::linear_attention_kernel_unsupported(on(torch::kFloat32, 64), 64).find("bf16"), std::string::npos);
  EXPECT_NE(kernels::linear_attention_kernel_unsupported(on(torch::kBFloat16, 32), 32).find("head dim"),
            std::string::npos);
  EXPECT_NE(kernels::linear_attention_kernel_unsupported(on(torch::kBFloat16, 64), 128).find("feature dimension"),
            std::string::npos);
  EXPECT_EQ(kernels::linear_attention_kernel_unsupported(on(torch::kBFloat16, 128), 128), "");
}

enum class Decay { kNone, kFixed };

struct LinearCase {
  int64_t B, H, L, D;
  Decay decay;
  bool normalize;
};

std::string case_name(const ::testing::TestParamInfo<LinearCase>& info) {
  const auto& c = info.param;
  const char* decay[] = {"nodecay", "fixed"};
  return "B" + std::to_string(c.B) + "_H" + std::to_string(c.H) + "_L" + std::to_string(c.L) + "_D" +
         std::to_string(c.D) + "_" + decay[static_cast<int>(c.decay)] + (c.normalize ? "_norm" : "_nonorm");
}

// Per-head γ: RetNet's 1 − 2^(−5−h), with the last head a fast 0.9.
Tensor decays(int64_t H) {
  auto g = 1 - torch::pow(2.0, -5 - torch::arange(H, torch::kFloat64));
  if (H > 1) g[H - 1] = 0.9;
  return g;
}

// The math of linear_attention_naive, written plainly in the inputs' dtype.
Tensor plain_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& decay, bool normalize,
                       double eps) {
  const int64_t L = q.size(2);
  auto idx = torch::arange(L, torch::TensorOptions().device(q.device()));
  auto diff = (idx.view({L, 1}) - idx.view({1, L}));
  auto weight = (diff >= 0).to(q.scalar_type());
  if (decay.defined()) weight = weight * torch::pow(decay.view({-1, 1, 1}), diff.clamp_min(0).to(q.scalar_type()));
  auto w = torch::matmul(q, k.transpose(-1, -2)) * weight;
  auto num = torch::matmul(w, v);
  return normalize ? num / (w.sum(-1, true) + eps) : num;
}

void poison(int64_t B, int64_t H, int64_t L, int64_t D) {
  std::vector<Tensor> held;
  const auto opt = torch::dtype(torch::kBFloat16).device(torch::kCUDA);
  for (int i = 0; i < 6; ++i) held.push_back(torch::full({B, L, H, D}, NAN, opt));
  held.push_back(torch::full({B * H, L}, NAN, opt.dtype(torch::kFloat32)));
}

class LinearKernelVsReference : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearKernelVsReference, OutputAndGradientsWithinTwiceTheBf16Error) {
  SKIP_WITHOUT_CUDA();
  const auto& c = GetParam();
  const auto dev = torch::Device(torch::kCUDA);
  const double eps = 1e-6;
  torch::manual_seed(c.L * 7 + c.H);
  // φ = elu(x) + 1 of Gaussian x, rounded to bf16: every run sees these values.
  auto bf = torch::dtype(torch::kBFloat16).device(dev);
  const auto phi_q = (torch::elu(torch::randn({c.B, c.H, c.L, c.D}, dev)) + 1).to(torch::kBFloat16);
  const auto phi_k = (torch::elu(torch::randn({c.B, c.H, c.L, c.D}, dev)) + 1).to(torch::kBFloat16);
  const auto v = torch::randn({c.B, c.H, c.L, c.D}, bf);
  const auto grad_out = torch::randn({c.B, c.H, c.L, c.D}, bf);
  const Tensor gamma = c.decay == Decay::kNone ? Tensor() : decays(c.H).to(dev);

  struct Result {
    std::vector<Tensor> values;  // out, dφq, dφk, dv
  };
  auto run = [&](torch::ScalarType t, const std::function<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                                                  const Tensor&)>& fn,
                 torch::ScalarType decay_type) {
    auto q = phi_q.to(t).detach().requires_grad_(), k = phi_k.to(t).detach().requires_grad_(),
         vv = v.to(t).detach().requires_grad_();
    Tensor g = gamma.defined() ? gamma.to(decay_type).detach() : Tensor();
    auto out = fn(q, k, vv, g);
    out.backward(grad_out.to(out.scalar_type()));
    return Result{{out.detach(), q.grad(), k.grad(), vv.grad()}};
  };
  LinearAttentionOptions opts;
  opts.normalize = c.normalize;
  opts.eps = eps;
  auto chunked = [&](const Tensor& q, const Tensor& k, const Tensor& vv, const Tensor& g) {
    auto o = opts;
    o.decay = g;
    return linear_attention_chunked(q, k, vv, o);
  };
  auto plain = [&](const Tensor& q, const Tensor& k, const Tensor& vv, const Tensor& g) {
    return plain_reference(q, k, vv, g, c.normalize, eps);
  };
  auto kernel = [&](const Tensor& q, const Tensor& k, const Tensor& vv, const Tensor& g) {
    return kernels::linear_attention_cuda(q, k, vv, g, c.normalize, eps);
  };
  const auto truth = run(torch::kFloat64, chunked, torch::kFloat64);
  const auto lowp = run(torch::kBFloat16, plain, torch::kBFloat16);
  const char* names[] = {"out", "dphi_q", "dphi_k", "dv"};
  for (int attempt = 0; attempt < 2; ++attempt) {  // twice: a result that moves between runs is a race
    poison(c.B, c.H, c.L, c.D);
    const auto got = run(torch::kBFloat16, kernel, torch::kFloat32);
    ASSERT_EQ(got.values.size(), truth.values.size());
    for (size_t i = 0; i < got.values.size(); ++i) {
      ASSERT_TRUE(got.values[i].defined()) << names[i] << ": no gradient";
      ASSERT_FALSE(torch::isnan(got.values[i]).any().item<bool>()) << names[i] << ": NaN (unwritten or poisoned)";
      const double e_kernel = max_err(got.values[i], truth.values[i]);
      const double e_lowp = max_err(lowp.values[i], truth.values[i]);
      const double scale = truth.values[i].abs().max().item<double>();
      const double bound = 2 * e_lowp + 1e-3 * std::max(1.0, scale);
      if (attempt == 0) std::cout << "[ margin   ] " << names[i] << ": kernel err / bound " << e_kernel / bound << "\n";
      EXPECT_LE(e_kernel, bound)
          << names[i] << ": kernel err " << e_kernel << " vs bf16 reference err " << e_lowp << " (max |ref| "
          << scale << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LinearKernelVsReference,
    ::testing::Values(LinearCase{2, 3, 999, 64, Decay::kNone, true}, LinearCase{1, 2, 1031, 128, Decay::kFixed, true},
                      LinearCase{2, 2, 37, 64, Decay::kFixed, true}, LinearCase{1, 1, 1, 64, Decay::kNone, true},
                      LinearCase{1, 2, 64, 64, Decay::kFixed, false}, LinearCase{1, 2, 256, 64, Decay::kNone, true},
                      LinearCase{1, 2, 257, 128, Decay::kFixed, false},
                      LinearCase{1, 3, 700, 64, Decay::kFixed, true},
                      LinearCase{3, 1, 2000, 128, Decay::kNone, false},
                      LinearCase{1, 2, 4096, 64, Decay::kFixed, true},
                      LinearCase{1, 2, 4100, 64, Decay::kFixed, true},
                      // 64 heads x 16 blocks: more CTAs than the GPU holds at
                      // once, so a pass runs in several waves.
                      LinearCase{4, 16, 2048, 64, Decay::kFixed, true},
                      // No decay: the fused backward (v6), one pass for dφq,
                      // dφk, dv, with and without the normaliser (the cases
                      // above without decay take it too). Tails, a single
                      // row, many blocks and CTAs, head dim 128.
                      LinearCase{2, 2, 37, 64, Decay::kNone, false}, LinearCase{1, 1, 1, 64, Decay::kNone, false},
                      LinearCase{2, 3, 999, 64, Decay::kNone, false}, LinearCase{1, 2, 4100, 64, Decay::kNone, false},
                      LinearCase{1, 2, 4100, 64, Decay::kNone, true}, LinearCase{2, 2, 37, 64, Decay::kNone, true},
                      LinearCase{4, 16, 2048, 64, Decay::kNone, false},
                      LinearCase{4, 16, 2048, 64, Decay::kNone, true},
                      LinearCase{1, 2, 1031, 128, Decay::kNone, false},
                      LinearCase{1, 2, 1031, 128, Decay::kNone, true}),
    case_name);

// The block size from 8K on (op.cpp): H100 slots are 132 SMs x 3 CTAs for
// both pass kernels at D = 64 (NOTES.md, v5; x 2 for the dφk/dv kernel in v4).
TEST(LinearKernel, BlocksFillTheFewestWholeWaves) {
  using kernels::linear_attention::fewest_waves_block;
  // B = 1, H = 16: 16K is 4096 sub-chunks, 64K 16384.
  EXPECT_EQ(fewest_waves_block(4096, 396, 32), 11);   // one wave: 24 blocks per head, 384 CTAs
  EXPECT_EQ(fewest_waves_block(4096, 264, 32), 16);   // one wave: 256 CTAs
  EXPECT_EQ(fewest_waves_block(16384, 396, 32), 21);  // 42 in one wave is too long: two waves
  EXPECT_EQ(fewest_waves_block(16384, 264, 32), 32);
  for (int64_t sub : {1, 7, 255, 4096, 100000, 1000000}) {
    for (int64_t slots : {1, 16, 264, 396}) {
      const int per = fewest_waves_block(sub, slots, 32);
      ASSERT_GE(per, 1);
      ASSERT_LE(per, 32);
      const int64_t ctas = (sub + per - 1) / per;  // at most: the last block of a head may be short
      const int64_t waves = (ctas + slots - 1) / slots;
      // No shorter block fits in the same number of waves.
      if (per > 1) {
        EXPECT_GT((sub + per - 2) / (per - 1), waves * slots) << sub << " " << slots;
      }
    }
  }
  EXPECT_EQ(fewest_waves_block(0, 396, 32), 1);
}

// The wgmma kernels' shared-memory tile layout (kernels/swizzle.h, used by the
// linear- and sparse-attention kernels): every element of a tile once, 16-byte
// chunks whole, and exactly the tensor cores' 128-byte swizzle of the
// row-major address, which the wgmma descriptors (kernels/wgmma.cuh) assume.
// ldmatrix reads one chunk from each of 8 consecutive rows: those must fall
// in 8 distinct 16-byte bank groups.
template <int kR>
void check_swizzled_layout(int cols) {
  using kernels::swizzled_offset;
  std::vector<int> seen(kR * cols, 0);
  for (int r = 0; r < kR; ++r) {
    for (int c = 0; c < cols; ++c) {
      const int off = swizzled_offset<kR>(r, c);
      ASSERT_GE(off, 0);
      ASSERT_LT(off, kR * cols);
      ++seen[off];
      if (c % 8 != 0) {
        EXPECT_EQ(off, swizzled_offset<kR>(r, c - c % 8) + c % 8) << "chunk split at " << r << ", " << c;
      }
      const int plain = (c / 64) * kR * 128 + r * 128 + (c % 64) * 2;  // row-major bytes in the column half
      EXPECT_EQ(2 * off, plain ^ (((plain >> 7) & 7) << 4)) << r << ", " << c;
    }
  }
  for (int i = 0; i < kR * cols; ++i) ASSERT_EQ(seen[i], 1) << "offset " << i;
  for (int r0 = 0; r0 < kR; r0 += 8) {
    for (int c = 0; c < cols; c += 8) {
      std::set<int> groups;
      for (int r = r0; r < r0 + 8; ++r) groups.insert((swizzled_offset<kR>(r, c) * 2 / 16) % 8);
      EXPECT_EQ(groups.size(), 8u) << "rows " << r0 << "+, column " << c;
    }
  }
}

TEST(LinearKernel, SwizzledTilesHoldEveryElementOnceInTheTensorCoreSwizzle) {
  check_swizzled_layout<64>(64);    // a sub-chunk's rows, D = 64
  check_swizzled_layout<64>(128);   // D = 128: two column halves
  check_swizzled_layout<128>(128);  // a D = 128 state
}

// A decay that requires grad is refused with the way out, not silently frozen.
TEST(LinearKernel, RefusesADecayThatRequiresGrad) {
  SKIP_WITHOUT_CUDA();
  auto x = torch::ones({1, 2, 8, 64}, torch::dtype(torch::kBFloat16).device(torch::kCUDA));
  auto gamma = torch::full({2}, 0.9, torch::dtype(torch::kFloat32).device(torch::kCUDA)).requires_grad_();
  try {
    kernels::linear_attention_cuda(x, x, x, gamma, true, 1e-6);
    FAIL() << "a learned decay went through the kernel";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("impl: reference"), std::string::npos) << e.what();
  }
  torch::NoGradGuard no_grad;  // generation: the decay is a constant
  EXPECT_EQ(kernels::linear_attention_cuda(x, x, x, gamma, true, 1e-6).size(2), 8);
}

// The recurrent step kernel, token by token, equals the chunked kernel.
TEST(LinearKernel, StepEqualsTheChunkedKernelTokenByToken) {
  SKIP_WITHOUT_CUDA();
  const auto dev = torch::Device(torch::kCUDA);
  for (int64_t D : {64, 128})
    for (bool normalize : {true, false}) {
      const int64_t B = 2, H = 3, L = 150;
      torch::manual_seed(D + normalize);
      auto bf = torch::dtype(torch::kBFloat16).device(dev);
      auto q = (torch::elu(torch::randn({B, H, L, D}, dev)) + 1).to(torch::kBFloat16);
      auto k = (torch::elu(torch::randn({B, H, L, D}, dev)) + 1).to(torch::kBFloat16);
      auto v = torch::randn({B, H, L, D}, bf);
      auto gamma = decays(H).to(torch::kFloat32).to(dev);
      torch::NoGradGuard no_grad;
      auto full = kernels::linear_attention_cuda(q, k, v, gamma, normalize, 1e-6);
      auto S = torch::zeros({B, H, D, D}, torch::dtype(torch::kFloat32).device(dev));
      auto z = torch::zeros({B, H, D}, torch::dtype(torch::kFloat32).device(dev));
      std::vector<Tensor> steps;
      for (int64_t t = 0; t < L; ++t) {
        steps.push_back(kernels::linear_attention_step_cuda(q.narrow(2, t, 1), k.narrow(2, t, 1), v.narrow(2, t, 1),
                                                            S, z, gamma, normalize, 1e-6));
      }
      auto stepped = torch::cat(steps, 2).to(torch::kFloat32);
      const double scale = full.to(torch::kFloat32).abs().max().item<double>();
      // Both round the output to bf16 once (8 bits): 2^-7 of the largest value.
      EXPECT_LT(max_err(stepped, full), scale / 128) << "D=" << D << " normalize=" << normalize;
      // The step kernel's state is the fp64 running sum.
      auto k64 = k.to(torch::kFloat64), v64 = v.to(torch::kFloat64);
      auto w = torch::pow(gamma.to(torch::kFloat64).view({1, H, 1}),
                          (L - 1 - torch::arange(L, torch::dtype(torch::kFloat64).device(dev))).view({1, 1, L}));
      auto S_ref = torch::matmul((k64 * w.unsqueeze(-1)).transpose(-1, -2), v64);
      EXPECT_LT(max_err(S, S_ref), 1e-4 * S_ref.abs().max().item<double>());
    }
}

Mixer make_mixer(const std::string& yaml) {
  Section s(YAML::Load(yaml), "model.mixer", "test", YAML::Node(YAML::NodeType::Map));
  MixerDims dims;
  dims.d_model = 256;
  dims.n_heads = 4;
  dims.n_layers = 1;
  dims.max_positions = 4096;
  dims.causal = true;
  return build_mixer(parse_mixer(s), dims);
}

// impl: auto on CUDA under bf16 autocast takes the kernel and computes what
// impl: reference computes (to bf16 noise), forward and backward; impl: cuda
// refuses fp32 with a reason.
TEST(LinearKernel, MixerTakesItUnderBf16AutocastAndMatchesTheReference) {
  SKIP_WITHOUT_CUDA();
  const auto dev = torch::Device(torch::kCUDA);
  for (const std::string decay : {"none", "fixed", "learned"}) {
    const std::string yaml = "{type: linear, decay: " + decay + "}";
    torch::manual_seed(5);
    auto fast = make_mixer(yaml), ref = make_mixer(yaml.substr(0, yaml.size() - 1) + ", impl: reference}");
    fast->to(dev);
    ref->to(dev);
    {
      torch::NoGradGuard no_grad;
      auto src = fast->named_parameters(), dst = ref->named_parameters();
      for (const auto& p : src) dst[p.key()].copy_(p.value());
      auto sb = fast->named_buffers(), db = ref->named_buffers();
      for (const auto& b : sb) db[b.key()].copy_(b.value());
    }
    auto x = torch::randn({2, 777, 256}, dev);
    std::vector<Tensor> outs, grads;
    for (auto& m : {fast, ref}) {
      auto xi = x.clone().requires_grad_();
      Tensor y;
      {
        AutocastGuard autocast(dev, true);
        y = m->forward(xi, MixerContext{});
      }
      y.to(torch::kFloat32).pow(2).mean().backward();
      outs.push_back(y.to(torch::kFloat32));
      grads.push_back(xi.grad());
      for (const auto& p : m->named_parameters()) grads.push_back(p.value().grad());
    }
    const double so = outs[1].abs().max().item<double>();
    EXPECT_LT(max_err(outs[0], outs[1]), 0.03 * so) << decay;
    const size_t n = grads.size() / 2;
    for (size_t i = 0; i < n; ++i) {
      const double s = grads[n + i].abs().max().item<double>();
      EXPECT_LT(max_err(grads[i], grads[n + i]), 0.05 * s + 1e-6) << decay << " gradient " << i;
    }
  }
  // `learned` above ran the reference on both sides (auto falls back while the
  // decay takes gradients); impl: cuda must refuse it and say why.
  auto learned = make_mixer("{type: linear, decay: learned, impl: cuda}");
  learned->to(dev);
  try {
    AutocastGuard autocast(dev, true);
    learned->forward(torch::randn({1, 64, 256}, dev), MixerContext{});
    FAIL() << "impl: cuda ran a learned decay that takes gradients";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("learned decay"), std::string::npos) << e.what();
  }
  {
    torch::NoGradGuard no_grad;  // without gradients the learned decay is a fixed one: the kernel runs
    AutocastGuard autocast(dev, true);
    EXPECT_NO_THROW(learned->forward(torch::randn({1, 64, 256}, dev), MixerContext{}));
  }
  auto strict = make_mixer("{type: linear, impl: cuda}");
  strict->to(dev);
  try {
    strict->forward(torch::randn({1, 64, 256}, dev), MixerContext{});
    FAIL() << "impl: cuda ran in fp32";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace longtrain
