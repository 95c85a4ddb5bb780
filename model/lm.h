// The language model: token embedding + learned positions, pre-norm blocks
// (`x + mixer(norm(x))`, `x + mlp(norm(x))`), final norm, output head (tied to
// the embedding by default).
//
// tokens: [B, L] int64 -> logits: [B, L, V]. A sequence longer than the
// position table is an error that says so (the curriculum extends the table by
// copying rows; nothing here grows it silently).
#pragma once

#include <torch/torch.h>

#include "model/activation_checkpoint.h"
#include "model/config.h"
#include "model/mixer.h"

namespace longtrain {

// LayerNorm or RMSNorm over the last dimension, chosen by name.
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(const std::string& kind, int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);
  // {s, norm(s)} for s = x + branch (branch undefined: s = x). On CUDA in
  // bf16/fp16 one kernel takes the sum and the norm, forward and backward
  // (kernels/norm); elsewhere the add and forward().
  std::pair<torch::Tensor, torch::Tensor> add_forward(const torch::Tensor& x, const torch::Tensor& branch);

 private:
  bool rms_;
  double eps_;  // 1e-5 for LayerNorm, 1e-6 for RMSNorm
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(Norm);

// The residual stream between pre-norm blocks: its value is residual +
// branch. A block hands on its MLP branch unsummed, so that the next norm's
// kernel takes the add with the norm (branch undefined: the value is residual).
struct ResidualStream {
  torch::Tensor residual, branch;
  torch::Tensor value() const { return branch.defined() ? residual + branch : residual; }
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& cfg, int64_t layer);
  ResidualStream forward(const ResidualStream& x, const MixerContext& ctx);
  // x_t: [B, 1, D] -> [B, 1, D] through the mixer's incremental form.
  torch::Tensor step(const torch::Tensor& x_t, MixerState& state);
  const Mixer& mixer() const { return mixer_; }
  // kMixer recomputes mixer(norm1(x)) in backward; kFull the whole block.
  void set_checkpointing(Checkpointing c) { checkpointing_ = c; }

 private:
  torch::Tensor mixer_branch(const torch::Tensor& x, const MixerContext& ctx);
  // proj(gelu_tanh(fc(x))): on CUDA in bf16/fp16 four cuBLASLt GEMMs with the
  // GELU and the bias gradients in their epilogues (kernels/mlp).
  torch::Tensor mlp(const torch::Tensor& x);
  ResidualStream block(const ResidualStream& x, const MixerContext& ctx, bool checkpoint_mixer);
  std::vector<torch::Tensor> parameters_of(std::initializer_list<torch::nn::Module*> modules) const;

  double dropout_;
  Checkpointing checkpointing_ = Checkpointing::kNone;
  Norm norm1_{nullptr}, norm2_{nullptr};
  Mixer mixer_;
  torch::nn::Linear fc_{nullptr}, proj_{nullptr};
};
TORCH_MODULE(Block);

// Generation state of the whole model: one mixer state per layer.
struct LmState {
  std::vector<std::unique_ptr<MixerState>> layers;
  int64_t position = 0;  // the next token's position
};

class LanguageModelImpl : public torch::nn::Module {
 public:
  explicit LanguageModelImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& tokens, const MixerContext& ctx = {});
  // The final-normed hidden states [B, L, D] that the output head reads; task
  // heads (model/task_heads.h) read them too.
  torch::Tensor hidden(const torch::Tensor& tokens, const MixerContext& ctx = {});
  // The output head: hidden [..., D] -> logits [..., V].
  torch::Tensor head(const torch::Tensor& hidden);
  // Mean next-token cross-entropy of `targets` [B, L] (ignore_index -100, as
  // torch's cross_entropy), in fp32. loss_chunk > 0 computes the output head
  // and the loss over that many tokens at a time (model/chunked_cross_entropy.h):
  // the [B*L, V] logits never exist whole; 0 computes them all at once.
  torch::Tensor loss(const torch::Tensor& tokens, const torch::Tensor& targets, int64_t loss_chunk = 0,
                     const MixerContext& ctx = {});
  // Activation checkpointing of every block (see BlockImpl::set_checkpointing).
  void set_checkpointing(Checkpointing c);
  // Incremental decoding (model/generate.h): "" when every layer has an
  // incremental form, else which layer lacks one and why.
  std::string step_unsupported() const;
  LmState initial_state(int64_t batch) const;
  // tokens: [B] int64 at position state.position -> logits [B, V], equal to
  // that position's row of forward() over the whole sequence so far.
  torch::Tensor step(const torch::Tensor& tokens, LmState& state);
  const ModelConfig& config() const { return cfg_; }
  int64_t num_parameters() const;
  torch::nn::ModuleList blocks() const { return blocks_; }

 private:
  void init_weights();

  ModelConfig cfg_;
  torch::nn::Embedding tok_emb_{nullptr}, pos_emb_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  Norm final_norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(LanguageModel);

// Copies every parameter and buffer of `from` into `to`, which must have the
// same names and shapes, except that `to`'s learned position table may be
// longer: its first n rows are `from`'s and the new rows repeat the learned
// ones (row i takes row i mod n), Longformer's copy initialisation, so a model
// trained on short sequences starts long ones near its old loss instead of
// from random positions. The cost sits at the wraps: the few tokens after
// each multiple of n see "position 0" with a full context behind them (on the
// tiny sliding-window model, 2.1 instead of 1.1 nats for the 16 tokens after
// a wrap; elsewhere within 0.05 of the short-context loss, tested), which
// training after the extension removes. Used at curriculum phase boundaries
// and by `longtrain extend`. Throws naming the first parameter that cannot
// carry over.
void copy_parameters(LanguageModelImpl& from, LanguageModelImpl& to);

}  // namespace longtrain
