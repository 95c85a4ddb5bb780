// Fine-tuning heads on the LM body, with Longformer's task-driven global
// attention (Beltagy et al. 2020, §6): the classification token attends to and
// is attended by every position; for QA, the question tokens are.
//
//   SequenceClassifier: hidden[b, cls_index[b]] -> Linear(D, C) -> logits [B, C]
//   SpanExtractor:      hidden [B, L, D] -> Linear(D, 2) -> start, end logits [B, L]
//
// Global attention reaches the mixers through MixerContext::global_mask; the
// sparse family uses it when its recipe enables global tokens (global_first /
// global_token, which create the global projections); full attention already
// sees everything; linear and AFT ignore it. For a causal body pool the last
// token (the only one that has seen the whole input); a bidirectional body
// (model.causal: false) may pool the first.
#pragma once

#include <torch/torch.h>

#include <utility>

#include "model/lm.h"

namespace longtrain {

class SequenceClassifierImpl : public torch::nn::Module {
 public:
  SequenceClassifierImpl(LanguageModel body, int64_t num_classes);
  // tokens [B, L], cls_index [B] int64, global_mask [B, L] bool (may be
  // undefined) -> logits [B, C].
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& cls_index,
                        const torch::Tensor& global_mask = {});
  LanguageModel body() const { return body_; }

 private:
  LanguageModel body_;
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(SequenceClassifier);

class SpanExtractorImpl : public torch::nn::Module {
 public:
  explicit SpanExtractorImpl(LanguageModel body);
  // tokens [B, L], global_mask [B, L] -> (start, end) logits, each [B, L].
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& tokens, const torch::Tensor& global_mask = {});
  LanguageModel body() const { return body_; }

 private:
  LanguageModel body_;
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(SpanExtractor);

// Mean cross-entropy of logits [B, C] against labels [B].
torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& labels);

// (CE(start) + CE(end)) / 2 over the positions allowed by answer_mask [B, L]
// (the context tokens); start, end [B] are token indices, end inclusive.
torch::Tensor span_loss(const torch::Tensor& start_logits, const torch::Tensor& end_logits, const torch::Tensor& start,
                        const torch::Tensor& end, const torch::Tensor& answer_mask);

// The best span per row, start <= end < start + max_len, inside answer_mask:
// (start [B], end [B]) int64.
std::pair<torch::Tensor, torch::Tensor> best_span(const torch::Tensor& start_logits, const torch::Tensor& end_logits,
                                                  const torch::Tensor& answer_mask, int64_t max_len);

}  // namespace longtrain
