// See evaluate.h.
#include "trainer/evaluate.h"

#include <algorithm>
#include <cmath>

#include "trainer/device.h"

namespace longtrain {
namespace {

struct Window {
  int64_t start, len;  // tokens [start, start + len) of the stream; len >= 2
};

std::vector<Window> make_windows(const TokenStream& s, int64_t seq_len, int64_t max_windows) {
  std::vector<Window> out;
  for (int64_t d = 0; d < s.num_docs() && static_cast<int64_t>(out.size()) < max_windows; ++d) {
    const int64_t end = s.doc_end(d) + 1;  // include the closing <eos> as a target
    for (int64_t a = s.doc_starts[d]; a + 1 < end && static_cast<int64_t>(out.size()) < max_windows;
         a += seq_len) {
      out.push_back({a, std::min(seq_len + 1, end - a)});
    }
  }
  return out;
}

}  // namespace

// Positions x rows per slice of the output head: 8192 tokens of a 32K
// vocabulary are 1 GiB of fp32 log-probabilities.
constexpr int64_t kEvalChunkTokens = 8192;

EvalResult evaluate(LanguageModel& model, const TokenStream& val, const Tokenizer& tok,
                    const EvalOptions& opt) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  const auto windows = make_windows(val, opt.seq_len, opt.max_windows);
  double nats = 0, lr_nats = 0;
  int64_t tokens = 0, bytes = 0, lr_count = 0, lr_correct = 0;
  const bool marks = !val.long_range.empty();

  for (size_t b0 = 0; b0 < windows.size(); b0 += static_cast<size_t>(opt.batch_size)) {
    const size_t b1 = std::min(windows.size(), b0 + static_cast<size_t>(opt.batch_size));
    const int64_t B = static_cast<int64_t>(b1 - b0);
    int64_t width = 0;
    for (size_t i = b0; i < b1; ++i) width = std::max(width, windows[i].len);
    // [B, width]; padding targets are -100 and ignored.
    auto inputs = torch::zeros({B, width - 1}, torch::kInt64);
    auto targets = torch::full({B, width - 1}, -100, torch::kInt64);
    auto in_a = inputs.accessor<int64_t, 2>();
    auto tg_a = targets.accessor<int64_t, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const Window& w = windows[b0 + r];
      for (int64_t i = 0; i + 1 < w.len; ++i) {
        in_a[r][i] = val.tokens[w.start + i];
        tg_a[r][i] = val.tokens[w.start + i + 1];
      }
    }
    torch::Tensor hidden;
    {
      AutocastGuard autocast(opt.device, opt.bf16);
      hidden = model->hidden(inputs.to(opt.device));  // [B, L, D]
    }
    // The head and the log-softmax a slice of positions at a time, so that
    // [B, L, V] logits never exist whole (a 1M-token window would need 128 GB).
    const int64_t span = std::max<int64_t>(1, kEvalChunkTokens / B);
    for (int64_t p0 = 0; p0 < width - 1; p0 += span) {
      const int64_t n = std::min(span, width - 1 - p0);
      torch::Tensor logits;
      {
        AutocastGuard autocast(opt.device, opt.bf16);
        logits = model->head(hidden.narrow(1, p0, n));  // [B, n, V]
      }
      // [B, n, V] fp32 log-probabilities on the host for exact accumulation.
      auto logp = torch::log_softmax(logits.to(torch::kFloat32), -1).cpu();
      auto pred = logp.argmax(-1);
      auto lp_a = logp.accessor<float, 3>();
      auto pr_a = pred.accessor<int64_t, 2>();
      for (int64_t r = 0; r < B; ++r) {
        const Window& w = windows[b0 + r];
        for (int64_t i = p0; i < std::min(p0 + n, w.len - 1); ++i) {
          const int64_t t = tg_a[r][i];
          const double nll = -static_cast<double>(lp_a[r][i - p0][t]);
          nats += nll;
          tokens += 1;
          bytes += tok.bytes_of(static_cast<int32_t>(t));
          if (marks && val.long_range[w.start + i + 1]) {
            lr_count += 1;
            lr_nats += nll;
            lr_correct += pr_a[r][i - p0] == t ? 1 : 0;
          }
        }
      }
    }
  }
  if (was_training) model->train();
  EvalResult r;
  r.tokens = tokens;
  r.loss = tokens ? nats / tokens : NAN;
  r.perplexity = std::exp(r.loss);
  r.bits_per_byte = bytes ? nats / std::log(2.0) / bytes : NAN;
  r.long_range_count = lr_count;
  if (lr_count) {
    r.long_range_accuracy = static_cast<double>(lr_correct) / lr_count;
    r.long_range_bits = lr_nats / lr_count / std::log(2.0);
  }
  return r;
}

}  // namespace longtrain
