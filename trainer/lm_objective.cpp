// The language-modelling objective (trainer/objective.h): windows of the
// corpus from the seeded sampler, next-token cross-entropy over every target,
// validation with trainer/evaluate.h. Each curriculum phase brings its own
// window length, batch size and model.
#include <sstream>

#include "data/sampler.h"
#include "trainer/device.h"
#include "trainer/objective.h"
#include "trainer/task_objective.h"

namespace longtrain {
namespace {

using nlohmann::json;

class LmObjective : public Objective {
 public:
  explicit LmObjective(const ObjectiveContext& ctx)
      : ctx_(ctx), corpus_(build_corpus(ctx.recipe->data, *ctx.tokenizer)),
        window_start_(parse_window_start(ctx.recipe->data.window_start)) {
    eo_.device = ctx.device;
    eo_.bf16 = ctx.bf16;
  }

  torch::nn::Module& module() override { return *model_; }

  void start_phase(const Recipe& phase, LanguageModel body, int64_t rank, int64_t /*world_size*/) override {
    model_ = body;
    const TrainConfig& tc = phase.train;
    batch_size_ = tc.batch_size;
    seq_len_ = tc.seq_len;
    loss_chunk_ = tc.loss_chunk;
    // This rank's rows are slots rank*b .. rank*b+b-1 of the global batch.
    sampler_ = std::make_unique<WindowSampler>(corpus_.train, tc.seq_len, ctx_.seed, rank * tc.batch_size,
                                               window_start_);
    eo_.seq_len = tc.seq_len;
    eo_.max_windows = tc.eval_docs;
    eo_.batch_size = tc.batch_size;
  }

  MicroBatchLoss micro_batch(int64_t step, int64_t micro) override {
    auto batch = sampler_->batch(step, micro, batch_size_);
    // A copy from pageable memory waits for the GPU to drain; from pinned
    // memory it is queued behind the previous step's work instead.
    batch = ctx_.device.is_cuda() ? batch.pin_memory().to(ctx_.device, /*non_blocking=*/true) : batch.to(ctx_.device);
    auto inputs = batch.slice(1, 0, seq_len_);       // [B, L]
    auto targets = batch.slice(1, 1, seq_len_ + 1);  // [B, L]
    torch::Tensor loss;
    {
      AutocastGuard autocast(ctx_.device, ctx_.bf16);
      // fp32, the mean over the micro-batch's tokens; the head and the loss in
      // chunks of train.loss_chunk tokens (model/chunked_cross_entropy.h).
      loss = model_->loss(inputs, targets, loss_chunk_);
    }
    // Every micro-batch of every rank has the same token count (all targets
    // count), so equal weights give the mean over the global batch's tokens.
    return {loss, batch_size_ * seq_len_};
  }

  Evaluation evaluate() override {
    Evaluation e;
    e.lm = ::longtrain::evaluate(model_, corpus_.val, *ctx_.tokenizer, eo_);
    const EvalResult& r = e.lm;
    e.record = {{"val_loss", r.loss}, {"val_bpb", r.bits_per_byte}, {"val_ppl", r.perplexity},
                {"val_tokens", r.tokens}, {"seq_len", eo_.seq_len}};
    std::ostringstream line;
    line << "val loss " << r.loss << ", " << r.bits_per_byte << " bits/byte";
    if (r.long_range_count) {
      e.record["long_range_accuracy"] = r.long_range_accuracy;
      e.record["long_range_bits"] = r.long_range_bits;
      e.record["long_range_count"] = r.long_range_count;
      line << ", long-range accuracy " << 100.0 * r.long_range_accuracy << "% (" << r.long_range_bits
           << " bits; chance " << 100.0 * kLongRangeChanceAccuracy << "%, " << kLongRangeChanceBits << " bits)";
    }
    e.line = line.str();
    return e;
  }

  std::string summary(const Evaluation& before, const Evaluation& after) const override {
    std::ostringstream s;
    s << "summary: val loss " << before.lm.loss << " -> " << after.lm.loss << ", bits/byte "
      << before.lm.bits_per_byte << " -> " << after.lm.bits_per_byte;
    if (after.lm.long_range_count) {
      s << ", long-range accuracy " << 100 * before.lm.long_range_accuracy << "% -> "
        << 100 * after.lm.long_range_accuracy << "% (chance " << 100 * kLongRangeChanceAccuracy << "%)";
    }
    return s.str();
  }

  std::string description() const override { return corpus_.description; }

 private:
  ObjectiveContext ctx_;
  Corpus corpus_;
  WindowSampler::Start window_start_;
  LanguageModel model_{nullptr};
  std::unique_ptr<WindowSampler> sampler_;
  EvalOptions eo_;
  int64_t batch_size_ = 0, seq_len_ = 0, loss_chunk_ = 0;
};

}  // namespace

std::unique_ptr<Objective> make_objective(const ObjectiveContext& ctx) {
  if (ctx.recipe->task.finetune()) return make_task_objective(ctx);
  return std::make_unique<LmObjective>(ctx);
}

}  // namespace longtrain
