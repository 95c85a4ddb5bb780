// See task_heads.h.
#include "model/task_heads.h"

#include <limits>

namespace longtrain {

SequenceClassifierImpl::SequenceClassifierImpl(LanguageModel body, int64_t num_classes) : body_(std::move(body)) {
  TORCH_CHECK(num_classes >= 2, "a classifier needs at least 2 classes, got ", num_classes);
  register_module("body", body_);
  head_ = register_module("head", torch::nn::Linear(body_->config().d_model, num_classes));
}

torch::Tensor SequenceClassifierImpl::forward(const torch::Tensor& tokens, const torch::Tensor& cls_index,
                                              const torch::Tensor& global_mask) {
  TORCH_CHECK(cls_index.dim() == 1 && cls_index.size(0) == tokens.size(0), "cls_index must be [B = ", tokens.size(0),
              "], got ", cls_index.sizes());
  MixerContext ctx;
  ctx.global_mask = global_mask;
  auto h = body_->hidden(tokens, ctx);  // [B, L, D]
  // [B, L, D] -> [B, D] at each row's classification token
  auto idx = cls_index.to(h.device()).view({-1, 1, 1}).expand({h.size(0), 1, h.size(2)});
  return head_->forward(h.gather(1, idx).squeeze(1));
}

SpanExtractorImpl::SpanExtractorImpl(LanguageModel body) : body_(std::move(body)) {
  register_module("body", body_);
  head_ = register_module("head", torch::nn::Linear(body_->config().d_model, 2));
}

std::pair<torch::Tensor, torch::Tensor> SpanExtractorImpl::forward(const torch::Tensor& tokens,
                                                                   const torch::Tensor& global_mask) {
  MixerContext ctx;
  ctx.global_mask = global_mask;
  auto se = head_->forward(body_->hidden(tokens, ctx));  // [B, L, 2]
  return {se.select(-1, 0), se.select(-1, 1)};
}

torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0),
              "classification_loss: logits [B, C] and labels [B], got ", logits.sizes(), " and ", labels.sizes());
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), labels.to(torch::kInt64));
}

namespace {

// Positions outside the mask can never be chosen: a large negative, not -inf,
// so an all-masked row stays finite.
torch::Tensor masked(const torch::Tensor& logits, const torch::Tensor& mask) {
  return logits.to(torch::kFloat32).masked_fill(~mask.to(torch::kBool), -1e9);
}

}  // namespace

torch::Tensor span_loss(const torch::Tensor& start_logits, const torch::Tensor& end_logits, const torch::Tensor& start,
                        const torch::Tensor& end, const torch::Tensor& answer_mask) {
  TORCH_CHECK(start_logits.sizes() == answer_mask.sizes() && end_logits.sizes() == answer_mask.sizes(),
              "span_loss: logits and mask must be [B, L] alike, got ", start_logits.sizes(), ", ", end_logits.sizes(),
              ", ", answer_mask.sizes());
  namespace F = torch::nn::functional;
  return 0.5 * (F::cross_entropy(masked(start_logits, answer_mask), start.to(torch::kInt64)) +
                F::cross_entropy(masked(end_logits, answer_mask), end.to(torch::kInt64)));
}

std::pair<torch::Tensor, torch::Tensor> best_span(const torch::Tensor& start_logits, const torch::Tensor& end_logits,
                                                  const torch::Tensor& answer_mask, int64_t max_len) {
  TORCH_CHECK(max_len >= 1, "best_span: max_len must be >= 1, got ", max_len);
  const int64_t L = start_logits.size(1);
  auto s = masked(start_logits, answer_mask), e = masked(end_logits, answer_mask);
  // score[b, i, j] = s[b, i] + e[b, j] for i <= j < i + max_len: [B, L, L],
  // fine for the lengths a test or a report decodes.
  auto score = s.unsqueeze(2) + e.unsqueeze(1);
  auto i = torch::arange(L, s.device()).view({L, 1}), j = torch::arange(L, s.device()).view({1, L});
  score = score.masked_fill(~((j >= i) & (j < i + max_len)), -std::numeric_limits<float>::infinity());
  auto flat = score.flatten(1).argmax(1);  // [B]
  return {torch::div(flat, L, "floor"), torch::remainder(flat, L)};
}

}  // namespace longtrain
