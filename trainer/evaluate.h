// Validation: loss, bits per byte and perplexity over held-out documents, and
// for corpora that mark long-range targets (the synthetic corpus), accuracy and
// bits on exactly those tokens, against chance.
//
// Each document is scored from its start in windows of seq_len (stride
// seq_len), so a short document is one window with all of its context.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "model/lm.h"

namespace longtrain {

struct EvalResult {
  double loss = 0;        // mean nats per target token
  double bits_per_byte = 0;
  double perplexity = 0;
  int64_t tokens = 0;
  int64_t long_range_count = 0;  // 0: the corpus marks no long-range targets
  double long_range_accuracy = 0;
  double long_range_bits = 0;    // mean bits per long-range target
};

struct EvalOptions {
  int64_t seq_len = 256;
  int64_t max_windows = 64;
  int64_t batch_size = 8;
  torch::Device device = torch::kCPU;
  bool bf16 = false;
};

EvalResult evaluate(LanguageModel& model, const TokenStream& val, const Tokenizer& tok,
                    const EvalOptions& opt);

// Chance level of the synthetic corpus' long-range targets (a uniform digit).
constexpr double kLongRangeChanceAccuracy = 0.1;
constexpr double kLongRangeChanceBits = 3.321928094887362;  // log2(10)

}  // namespace longtrain
