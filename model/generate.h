// Autoregressive generation from a LanguageModel: greedy or sampled
// (temperature, top-k, top-p), seeded so that a run is the same on every machine.
//
// With a model whose every layer has an incremental form (mixer.h: full
// attention's KV cache, sliding's ring buffer of `window`, linear attention's
// and AFT-simple's recurrent state) each new token costs one `step`; the prompt
// is fed through the same steps. Otherwise (bigbird, dilated or global sliding,
// AFT local/conv/full, bidirectional models) every new token recomputes the full
// forward over the sequence so far, and GenerateResult::fallback says why.
// Both paths produce the same tokens and (to float rounding) the same logits;
// tests/model/generate_test.cpp checks it for every mixer with a step form.
//
// Sampling draws from data/rng.h's counter-based generator keyed by
// (seed, step), not from torch's RNG, so it is independent of the device.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/lm.h"

namespace longtrain {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // keep the k most likely tokens; 0: all
  double top_p = 1.0;        // keep the smallest set whose probability reaches p; 1: all
  uint64_t seed = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  bool use_cache = true;     // false: always recompute the full forward (the reference)
  int64_t stop_token = -1;   // stop after generating this token (-1: never)
  bool keep_logits = false;  // return each step's logits (tests)
};

struct GenerateResult {
  std::vector<int64_t> tokens;  // the new tokens only
  torch::Tensor logits;         // [N, V] fp32 per generated token when keep_logits
  bool used_cache = false;
  std::string fallback;         // why the cache was not used ("" when it was, or not asked for)
};

// prompt: at least one token id.
GenerateResult generate(LanguageModel& model, const std::vector<int64_t>& prompt, const GenerateOptions& options);

// One draw from logits [V] (any float dtype, any device): greedy when
// temperature == 0; `draw` keys the uniform number used (seed, draw).
int64_t sample_token(const torch::Tensor& logits, const SamplingOptions& options, int64_t draw);

}  // namespace longtrain
