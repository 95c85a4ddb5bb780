// Training windows drawn from a token stream.
//
// Window (step, micro, row) starts at an offset that is a hash of
// (seed, step, micro, rank, row): deterministic, independent of what came
// before, so the sampler's whole state is the step it has reached, and a resumed
// run draws exactly the windows the uninterrupted one would have.
//
// Start modes: `random` starts anywhere in the packed stream; `document` starts
// at a document's first token (a short document is followed by the next ones),
// so every window sees its first document from the beginning — what a corpus
// whose later tokens depend on its opening (the synthetic one) needs to teach
// long-range retrieval rather than guessing.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "data/dataset.h"

namespace longtrain {

class WindowSampler {
 public:
  // Throws when the stream is too short for one window of seq_len + 1 tokens.
  enum class Start { kRandom, kDocument };
  WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed, int64_t rank = 0,
                Start start = Start::kRandom);
  // [batch, seq_len + 1] int64: inputs are [:, :-1], targets [:, 1:].
  torch::Tensor batch(int64_t step, int64_t micro, int64_t batch_size) const;
  int64_t seq_len() const { return seq_len_; }

 private:
  const TokenStream& stream_;
  int64_t seq_len_;
  uint64_t seed_;
  int64_t rank_;
  Start start_;
  int64_t eligible_docs_ = 0;  // documents whose start leaves room for a whole window
};

WindowSampler::Start parse_window_start(const std::string& name);

}  // namespace longtrain
