// GPU: a long sequence's training-step memory with activation checkpointing
// and the chunked cross-entropy grows linearly in L, under an explicit
// per-token bound, for the sliding and linear mixers. Skipped without CUDA.
#include <gtest/gtest.h>

#include "model/lm.h"
#include "trainer/config.h"
#include "trainer/device.h"

namespace longtrain {
namespace {

// Peak bytes above what was allocated before one bf16 training step (forward
// + backward, gradients kept) on one sequence of L tokens.
int64_t step_peak_bytes(LanguageModel& m, int64_t L, const torch::Device& dev) {
  m->zero_grad();
  torch::cuda::synchronize();
  const auto tokens = torch::randint(0, m->config().vocab_size, {1, L + 1},
                                     torch::TensorOptions().dtype(torch::kInt64).device(dev));
  reset_peak_memory(dev);
  const int64_t before = peak_memory_bytes(dev);
  torch::Tensor loss;
  {
    AutocastGuard autocast(dev, true);
    loss = m->loss(tokens.slice(1, 0, L), tokens.slice(1, 1, L + 1), /*loss_chunk=*/8192);
  }
  loss.backward();
  torch::cuda::synchronize();
  return peak_memory_bytes(dev) - before;
}

void check_linear(const std::string& mixer) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device dev(torch::kCUDA, 0);
  const Recipe r = load_recipe("", {"model.vocab_size=32000", "model.d_model=256", "model.n_layers=4",
                                    "model.n_heads=4", "model.positions=rope", "model.tie_embeddings=false",
                                    "model.mixer=" + mixer, "train.seq_len=65536"});
  torch::manual_seed(0);
  LanguageModel m(r.model);
  m->to(dev);
  m->train();
  m->set_checkpointing(Checkpointing::kFull);
  const int64_t D = r.model.d_model, layers = r.model.n_layers;
  step_peak_bytes(m, 4096, dev);  // warm-up: kernels, gradient buffers
  // Kept for backward: each block's fp32 input [L, D] and the chunked loss's
  // d hidden; live at the peak: one block's recompute (q, k, v, the 4D MLP in
  // fp32 and bf16, their gradients). 64 fp32 values of width D per token bound
  // the latter generously; the plain path's [L, 32000] logits alone are
  // 500 x D values per token here, so it could not pass.
  const double per_token = 4.0 * D * (layers + 2 + 64);
  const double fixed = 3.0 * 8192 * 32000 * 4;  // chunk buffers: logits, softmax, their bf16 copy
  int64_t prev = 0;
  for (int64_t L : {16384, 65536}) {
    const int64_t peak = step_peak_bytes(m, L, dev);
    EXPECT_LE(static_cast<double>(peak), fixed + per_token * L)
        << mixer << " L=" << L << ": " << peak / (1 << 20) << " MiB";
    if (prev) {
      // 4x the tokens: at most 4x the memory above the fixed part.
      EXPECT_LE(static_cast<double>(peak), 4.0 * static_cast<double>(prev) + fixed) << mixer << " L=" << L;
    }
    prev = peak;
    // Into the JUnit XML (scripts/gpu.sh test), for the memory table.
    ::testing::Test::RecordProperty("peak_mib_L" + std::to_string(L), std::to_string(peak >> 20));
  }
}

TEST(CudaMemory, SlidingLongSequenceIsLinearInL) { check_linear("{type: sliding, window: 512}"); }
TEST(CudaMemory, LinearLongSequenceIsLinearInL) { check_linear("{type: linear}"); }

}  // namespace
}  // namespace longtrain
