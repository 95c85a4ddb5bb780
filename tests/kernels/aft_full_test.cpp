// AFT-full, blocked (kernels/aft/full_op.cpp, aft_full_blocked) against the
// references, output and every gradient (dq, dk, dv and the bias's dw).
//
// CPU, fp64: the blocked algorithm equals model/aft.cpp aft_full to fp64
// rounding — odd lengths, blocks that do not divide L, one block, blocks of one
// row, B > 1, causal and bidirectional, a bias table larger than L, keys of
// spread in the hundreds.
//
// CPU and GPU, bf16/fp16: the rule of tests/kernels (flash-attention's)
//   err(op, ref_fp64) <= 2 * err(ref_lowp, ref_fp64) + atol
// where ref_lowp is the same matmul form run in the inputs' dtype (exp(w) and
// e^(k-max) v, e^(k-max) in bf16/fp16, the products by matmul, as plain PyTorch
// does; bench/aft.py's peer). Not aft_full on bf16 inputs: that one computes in
// fp64 inside, and a GEMM form with bf16 operands cannot reach its error (the
// operand rounding is itself as large as the output's). On CPU the op rounds
// its operands exactly where cuBLAS would, so the CPU cases check those
// rounding points on this machine; the GPU cases (skipped without CUDA) check
// the kernels and cuBLAS: L in {1, 37, 700, 2049}, d in {64, 1024}, B in {1, 2},
// bf16 and fp16, w fp32 and bf16, outputs poisoned with NaN, each run twice.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/aft/op.h"
#include "model/aft.h"
#include "tests/kernels/max_err.h"

namespace longtrain {
namespace {

using torch::Tensor;

// The matmul form of AFT-full in the inputs' dtype (bench/aft.py's peer, with
// the row max of exp(w) taken out so that no exp overflows).
Tensor matmul_form(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w, bool causal) {
  const int64_t L = q.size(1);
  auto wl = w.narrow(0, 0, L).narrow(1, 0, L).to(q.scalar_type());
  if (causal) {
    auto later = torch::ones({L, L}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
    wl = wl.masked_fill(later, -std::numeric_limits<double>::infinity());
  }
  auto ew = torch::exp(wl - wl.detach().amax(1, /*keepdim=*/true));  // [L, L]
  auto ek = torch::exp(k - k.detach().amax(1, /*keepdim=*/true));    // [B, L, d]
  return torch::sigmoid(q) * torch::matmul(ew, ek * v) / torch::matmul(ew, ek);
}

struct Inputs {
  std::vector<Tensor> qkv;  // [B, L, d] each
  Tensor w;                 // [P, P], P > L
  Tensor grad_out;
};

Inputs random_inputs(int64_t B, int64_t L, int64_t d, torch::ScalarType dtype, torch::ScalarType w_dtype,
                     double key_scale, const torch::Device& dev) {
  auto opt = torch::dtype(torch::kFloat32).device(dev);
  Inputs in;
  in.qkv = {torch::randn({B, L, d}, opt).to(dtype), (torch::randn({B, L, d}, opt) * key_scale).to(dtype),
            torch::randn({B, L, d}, opt).to(dtype)};
  in.w = torch::randn({L + 3, L + 3}, opt).to(w_dtype);
  in.grad_out = torch::randn({B, L, d}, opt).to(dtype);
  return in;
}

using Forward = std::function<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>;

// y, dq, dk, dv, dw of f on the inputs converted to (dtype, w_dtype).
std::vector<Tensor> run(const Forward& f, const Inputs& in, torch::ScalarType dtype, torch::ScalarType w_dtype) {
  std::vector<Tensor> x;
  for (const auto& t : in.qkv) x.push_back(t.detach().to(dtype).requires_grad_());
  auto w = in.w.detach().to(w_dtype).requires_grad_();
  auto y = f(x[0], x[1], x[2], w);
  y.backward(in.grad_out.to(y.scalar_type()));
  return {y.detach(), x[0].grad(), x[1].grad(), x[2].grad(), w.grad()};
}

const char* const kNames[] = {"out", "dq", "dk", "dv", "dw"};

// ---------------------------------------------------------------- the algorithm in fp64 (CPU)

struct Fp64Case {
  int64_t B, L, d, block;
  bool causal;
  double key_scale;
};

TEST(AftFullBlocked, EqualsTheReferenceInFp64) {
  const std::vector<Fp64Case> cases = {
      {2, 37, 5, 8, true, 1},    {2, 37, 5, 8, false, 1},  {1, 1, 3, 0, true, 1},   {2, 37, 4, 37, true, 1},
      {1, 37, 4, 1, true, 1},    {2, 50, 6, 7, false, 1},  {2, 64, 3, 16, true, 1}, {1, 45, 4, 100, true, 1},
      {2, 37, 5, 10, true, 30},  {2, 37, 5, 10, false, 30},
  };
  for (const auto& c : cases) {
    torch::manual_seed(c.L * 3 + c.block);
    const std::string name = "B" + std::to_string(c.B) + "_L" + std::to_string(c.L) + "_d" + std::to_string(c.d) +
                             "_block" + std::to_string(c.block) + (c.causal ? "_causal" : "_bidir") + "_keys" +
                             std::to_string(static_cast<int>(c.key_scale));
    auto in = random_inputs(c.B, c.L, c.d, torch::kFloat64, torch::kFloat64, c.key_scale, torch::kCPU);
    const auto ref = run([&](auto& q, auto& k, auto& v, auto& w) { return aft_full(q, k, v, w, c.causal); }, in,
                         torch::kFloat64, torch::kFloat64);
    const auto got = run(
        [&](auto& q, auto& k, auto& v, auto& w) { return kernels::aft_full_blocked(q, k, v, w, c.causal, c.block); },
        in, torch::kFloat64, torch::kFloat64);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(got[i].defined()) << name << " " << kNames[i];
      ASSERT_EQ(got[i].sizes(), ref[i].sizes()) << name << " " << kNames[i];
      const double scale = std::max(1.0, ref[i].abs().max().item<double>());
      EXPECT_LE(max_err(got[i], ref[i]), 1e-10 * scale) << name << " " << kNames[i];
    }
    // The bias table beyond L gets no gradient.
    EXPECT_EQ(got[4].narrow(0, c.L, 3).abs().max().item<double>(), 0.0) << name;
    EXPECT_EQ(got[4].narrow(1, c.L, 3).abs().max().item<double>(), 0.0) << name;
  }
}

TEST(AftFullBlocked, CausalOutputIgnoresTheFuture) {
  torch::manual_seed(3);
  auto in = random_inputs(1, 40, 4, torch::kFloat64, torch::kFloat64, 1, torch::kCPU);
  auto y = kernels::aft_full_blocked(in.qkv[0], in.qkv[1], in.qkv[2], in.w, true, 16);
  auto k2 = in.qkv[1].clone(), v2 = in.qkv[2].clone();
  k2.narrow(1, 25, 15).add_(3.0);
  v2.narrow(1, 25, 15).mul_(-2.0);
  auto y2 = kernels::aft_full_blocked(in.qkv[0], k2, v2, in.w, true, 16);
  EXPECT_LE(max_err(y.narrow(1, 0, 25), y2.narrow(1, 0, 25)), 1e-12);
  EXPECT_GT(max_err(y.narrow(1, 25, 15), y2.narrow(1, 25, 15)), 1e-3);
}

TEST(AftFullBlocked, RejectsBadInputsWithTheirSizes) {
  auto q = torch::randn({1, 8, 4});
  try {
    kernels::aft_full_blocked(q, q, q, torch::randn({7, 7}), true);
    FAIL() << "a bias smaller than L ran";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("P >= L = 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kernels::aft_full_blocked(q, q, torch::randn({1, 8, 5}), torch::randn({8, 8}), true), c10::Error);
  EXPECT_THROW(kernels::aft_full_blocked(q, q, q, torch::randn({8, 8}), true, -1), c10::Error);
  EXPECT_THROW(kernels::aft_full_blocked(q, q, q.to(torch::kFloat64), torch::randn({8, 8}), true), c10::Error);
  EXPECT_NE(kernels::aft_full_kernel_unsupported(q, torch::randn({8, 8})), "");
}

// ---------------------------------------------------------------- low precision: the 2x rule

struct LowpCase {
  int64_t B, L, d, block;
  torch::ScalarType dtype, w_dtype;
  bool causal;
};

std::string lowp_name(const LowpCase& c) {
  auto dt = [](torch::ScalarType t) {
    return t == torch::kBFloat16 ? "bf16" : t == torch::kFloat16 ? "fp16" : "fp32";
  };
  return "B" + std::to_string(c.B) + "_L" + std::to_string(c.L) + "_d" + std::to_string(c.d) + "_block" +
         std::to_string(c.block) + "_" + dt(c.dtype) + "_w" + dt(c.w_dtype) + (c.causal ? "_causal" : "_bidir");
}

// Allocates and frees NaN tensors of the outputs' and tiles' sizes so that the
// caching allocator hands those blocks to the op: an unwritten element stays NaN.
void poison(const LowpCase& c) {
  const auto dev = torch::Device(torch::kCUDA);
  std::vector<Tensor> held;
  for (int i = 0; i < 6; ++i) held.push_back(torch::full({c.B, c.L, c.d}, NAN, torch::dtype(c.dtype).device(dev)));
  for (int i = 0; i < 2; ++i) held.push_back(torch::full({c.L, c.L}, NAN, torch::dtype(c.w_dtype).device(dev)));
  for (int i = 0; i < 3; ++i) held.push_back(torch::full({c.L, 2 * c.B * c.d}, NAN, torch::dtype(torch::kFloat32).device(dev)));
}

void check_lowp(const LowpCase& c, const torch::Device& dev) {
  const std::string name = lowp_name(c) + (dev.is_cuda() ? "_cuda" : "_cpu");
  torch::manual_seed(c.L * 7 + c.d + c.block);
  auto in = random_inputs(c.B, c.L, c.d, c.dtype, c.w_dtype, 1, dev);
  const bool causal = c.causal;
  const auto ref64 = run([&](auto& q, auto& k, auto& v, auto& w) { return aft_full(q, k, v, w, causal); }, in,
                         torch::kFloat64, torch::kFloat64);
  const auto lowp = run([&](auto& q, auto& k, auto& v, auto& w) { return matmul_form(q, k, v, w, causal); }, in,
                        c.dtype, c.w_dtype);
  for (int attempt = 0; attempt < (dev.is_cuda() ? 2 : 1); ++attempt) {  // a result that moves is a race
    if (dev.is_cuda()) poison(c);
    const auto got = run(
        [&](auto& q, auto& k, auto& v, auto& w) { return kernels::aft_full_blocked(q, k, v, w, causal, c.block); },
        in, c.dtype, c.w_dtype);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].scalar_type(), i == 4 ? c.w_dtype : c.dtype) << name << " " << kNames[i];
      ASSERT_FALSE(torch::isnan(got[i]).any().item<bool>()) << name << " " << kNames[i] << ": NaN (unwritten?)";
      const double e_op = max_err(got[i], ref64[i]), e_lowp = max_err(lowp[i], ref64[i]);
      const double scale = ref64[i].abs().max().item<double>(), ref_norm = ref64[i].norm().item<double>();
      const double rel = (got[i].to(torch::kFloat64) - ref64[i]).norm().item<double>() / std::max(ref_norm, 1e-30);
      EXPECT_LE(e_op, 2 * e_lowp + 1e-4 * std::max(1.0, scale))
          << name << " " << kNames[i] << " run " << attempt << ": op max err " << e_op << " vs low-precision matmul form "
          << e_lowp << " (max |ref| " << scale << ", op relative error " << rel << ")";
      // At L = 1 dk and dw are exactly 0 (one key, one weight): the absolute rule governs.
      if (ref_norm > 1e-6) {
        EXPECT_LT(rel, 1e-2) << name << " " << kNames[i] << ": relative error";
      }
    }
  }
}

// The GPU's rounding points on the CPU: operands rounded to bf16/fp16, products in fp32.
// L = 1 holds dw = 0 exactly: the op's zero-row-sum correction (full_op.cpp) at work.
TEST(AftFullBlocked, LowPrecisionOperandsOnCpuWithinTwiceTheMatmulForm) {
  const auto bf16 = torch::kBFloat16, fp16 = torch::kFloat16, f32 = torch::kFloat32;
  for (const auto& c : std::vector<LowpCase>{{1, 1, 64, 0, bf16, f32, true},
                                             {1, 1, 64, 1, bf16, bf16, true},
                                             {2, 1, 64, 2, fp16, f32, true},
                                             {2, 1, 64, 3, bf16, f32, true},
                                             {2, 37, 64, 16, bf16, f32, true},
                                             {1, 37, 64, 10, fp16, fp16, true},
                                             {2, 300, 64, 128, bf16, bf16, true},
                                             {2, 129, 32, 50, bf16, f32, false}}) {
    check_lowp(c, torch::kCPU);
  }
}

class AftFullOnCuda : public ::testing::TestWithParam<LowpCase> {};

TEST_P(AftFullOnCuda, OutputAndGradientsWithinTwiceTheMatmulForm) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  check_lowp(GetParam(), torch::Device(torch::kCUDA));
}

std::vector<LowpCase> cuda_cases() {
  const auto bf16 = torch::kBFloat16, fp16 = torch::kFloat16, f32 = torch::kFloat32;
  return {
      {1, 1, 64, 0, bf16, f32, true},
      {2, 1, 64, 0, fp16, fp16, true},
      {2, 37, 64, 16, bf16, f32, true},
      {2, 37, 64, 0, fp16, f32, true},
      {2, 37, 36, 16, bf16, f32, true},  // d % 8 != 0: the row kernels one channel at a time
      {1, 37, 1024, 8, bf16, bf16, true},
      {2, 700, 64, 256, bf16, f32, true},
      {1, 700, 64, 100, fp16, bf16, true},
      {2, 700, 1024, 0, bf16, f32, true},
      {1, 700, 64, 256, bf16, f32, false},
      {1, 2049, 64, 512, bf16, f32, true},
      {2, 2049, 1024, 0, bf16, bf16, true},
      {1, 2049, 1024, 1000, fp16, f32, true},
      {1, 16500, 8, 0, bf16, bf16, true},  // L > 16K: rows of many thread steps, the last block partial
  };
}

INSTANTIATE_TEST_SUITE_P(Shapes, AftFullOnCuda, ::testing::ValuesIn(cuda_cases()),
                         [](const auto& info) { return lowp_name(info.param); });

}  // namespace
}  // namespace longtrain
