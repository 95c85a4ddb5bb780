// Language-model evaluation with the Longformer protocol (Beltagy et al. 2020,
// §4.1): the held-out stream is read in windows of `length` tokens advanced by
// `stride`; each window scores only its last `stride` predictions (the first
// window scores all of its own), so every token is scored exactly once and,
// past the first window, with at least length − stride tokens of context.
// Also the loss by position: the mean loss at each offset bucket of the
// window, over every full-length window, so one sees whether later tokens
// gain from the longer context.
//
// The stream is the validation documents joined by <eos> (as text8/enwik8 are
// one stream); a window starts anywhere and crosses document boundaries. A
// model trained only on document-aligned windows (data.window_start:
// document) with learned positions does much worse here than in evaluate.h,
// which reads each document from its start (README: Evaluation).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "model/lm.h"

namespace longtrain {

// A window reads tokens [start, start + len) and predicts tokens
// [start + 1, start + len]; it scores its predictions at offsets [score_from, len).
struct StrideWindow {
  int64_t start = 0;
  int64_t len = 0;
  int64_t score_from = 0;
};

// The windows over a stream of n_tokens tokens (n_tokens − 1 predictions);
// 1 <= stride <= length. At most max_windows (-1: all), from the start.
std::vector<StrideWindow> stride_windows(int64_t n_tokens, int64_t length, int64_t stride,
                                         int64_t max_windows = -1);

struct LmProtocolOptions {
  int64_t length = 256;
  int64_t stride = 128;
  int64_t max_windows = 32;
  int64_t buckets = 16;  // loss-by-position buckets across the window
  int64_t batch_size = 8;
  torch::Device device = torch::kCPU;
  bool bf16 = false;
};

struct LmProtocolResult {
  int64_t windows = 0;
  int64_t tokens = 0;  // predictions scored
  double loss = 0;     // nats per token
  double perplexity = 0;
  double bits_per_byte = 0;
  int64_t long_range_count = 0;  // scored long-range targets (synthetic corpus)
  double long_range_accuracy = 0;
  // Loss by position: bucket b covers window offsets [b·bucket_size, (b+1)·bucket_size).
  int64_t bucket_size = 0;
  std::vector<double> bucket_loss;
  std::vector<int64_t> bucket_count;
};

LmProtocolResult evaluate_lm_protocol(LanguageModel& model, const TokenStream& stream, const Tokenizer& tok,
                                      const LmProtocolOptions& opt);

}  // namespace longtrain
