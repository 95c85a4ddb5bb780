// See lm_protocol.h.
#include "trainer/lm_protocol.h"

#include <algorithm>
#include <cmath>

#include "trainer/device.h"

namespace longtrain {

std::vector<StrideWindow> stride_windows(int64_t n_tokens, int64_t length, int64_t stride, int64_t max_windows) {
  TORCH_CHECK(length >= 1 && stride >= 1 && stride <= length, "evaluation windows need 1 <= stride <= length, got ",
              "stride ", stride, ", length ", length);
  std::vector<StrideWindow> out;
  const int64_t targets = n_tokens - 1;
  // `done`: predictions [0, done) are scored; prediction j is token j + 1.
  int64_t done = 0;
  while (done < targets && (max_windows < 0 || static_cast<int64_t>(out.size()) < max_windows)) {
    const int64_t end = out.empty() ? std::min(length, targets) : std::min(done + stride, targets);
    const int64_t start = std::max<int64_t>(0, end - length);
    out.push_back({start, end - start, done - start});
    done = end;
  }
  return out;
}

LmProtocolResult evaluate_lm_protocol(LanguageModel& model, const TokenStream& stream, const Tokenizer& tok,
                                      const LmProtocolOptions& opt) {
  TORCH_CHECK(opt.buckets >= 1, "loss-by-position buckets must be >= 1, got ", opt.buckets);
  const auto windows = stride_windows(static_cast<int64_t>(stream.tokens.size()), opt.length, opt.stride,
                                      opt.max_windows);
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  LmProtocolResult r;
  r.windows = static_cast<int64_t>(windows.size());
  r.bucket_size = std::max<int64_t>(1, (opt.length + opt.buckets - 1) / opt.buckets);
  const int64_t n_buckets = (opt.length + r.bucket_size - 1) / r.bucket_size;
  r.bucket_loss.assign(static_cast<size_t>(n_buckets), 0.0);
  r.bucket_count.assign(static_cast<size_t>(n_buckets), 0);
  double nats = 0;
  int64_t bytes = 0, lr_correct = 0;
  const bool marks = !stream.long_range.empty();

  for (size_t b0 = 0; b0 < windows.size(); b0 += static_cast<size_t>(opt.batch_size)) {
    const size_t b1 = std::min(windows.size(), b0 + static_cast<size_t>(opt.batch_size));
    const int64_t B = static_cast<int64_t>(b1 - b0);
    int64_t width = 0;
    for (size_t i = b0; i < b1; ++i) width = std::max(width, windows[i].len);
    // [B, width]; a shorter window is padded at its end, which a causal model
    // never reads from earlier positions.
    auto inputs = torch::zeros({B, width}, torch::kInt64);
    auto in_a = inputs.accessor<int64_t, 2>();
    for (int64_t row = 0; row < B; ++row) {
      const auto& w = windows[b0 + row];
      for (int64_t i = 0; i < w.len; ++i) in_a[row][i] = stream.tokens[w.start + i];
    }
    torch::Tensor logits;
    {
      AutocastGuard autocast(opt.device, opt.bf16);
      logits = model->forward(inputs.to(opt.device));
    }
    auto logp = torch::log_softmax(logits.to(torch::kFloat32), -1).cpu();  // [B, width, V]
    auto pred = logp.argmax(-1);
    auto lp_a = logp.accessor<float, 3>();
    auto pr_a = pred.accessor<int64_t, 2>();
    for (int64_t row = 0; row < B; ++row) {
      const auto& w = windows[b0 + row];
      const bool full = w.len == opt.length;
      for (int64_t i = 0; i < w.len; ++i) {
        const int64_t pos = w.start + i + 1;  // the predicted token
        const int32_t t = stream.tokens[pos];
        const double nll = -static_cast<double>(lp_a[row][i][t]);
        if (full) {
          r.bucket_loss[i / r.bucket_size] += nll;
          r.bucket_count[i / r.bucket_size] += 1;
        }
        if (i < w.score_from) continue;
        nats += nll;
        r.tokens += 1;
        bytes += tok.bytes_of(t);
        if (marks && stream.long_range[pos]) {
          r.long_range_count += 1;
          lr_correct += pr_a[row][i] == t ? 1 : 0;
        }
      }
    }
  }
  if (was_training) model->train();
  for (size_t b = 0; b < r.bucket_loss.size(); ++b) {
    r.bucket_loss[b] = r.bucket_count[b] ? r.bucket_loss[b] / r.bucket_count[b] : NAN;
  }
  r.loss = r.tokens ? nats / r.tokens : NAN;
  r.perplexity = std::exp(r.loss);
  r.bits_per_byte = bytes ? nats / std::log(2.0) / bytes : NAN;
  r.long_range_accuracy = r.long_range_count ? static_cast<double>(lr_correct) / r.long_range_count : NAN;
  return r;
}

}  // namespace longtrain
