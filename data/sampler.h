// Training windows drawn from a token stream.
//
// Window (step, micro, slot) starts at an offset that is a hash of
// (seed, step, micro, slot): deterministic, independent of what came before, so
// the sampler's whole state is the step it has reached, and a resumed run draws
// exactly the windows the uninterrupted one would have.
//
// Slots number the rows of the global batch of a micro-step. Data-parallel
// rank r with per-rank batch b draws slots r*b .. r*b+b-1 (first_slot = r*b),
// so the ranks draw distinct windows and W ranks of batch b draw exactly the
// windows of one process with batch W*b: losses match, and a checkpoint
// resumes exactly under any world size that keeps W*b.
//
// Start modes: `random` starts anywhere in the packed stream; `document` starts
// at a document's first token (a short document is followed by the next ones),
// so every window sees its first document from the beginning — what a corpus
// whose later tokens depend on its opening (the synthetic one) needs to teach
// long-range retrieval rather than guessing. `inside` keeps every window within
// one document: it starts uniformly among the positions whose window of
// seq_len + 1 tokens ends before that document's <eos>; documents shorter than
// that are never drawn.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace longtrain {

class WindowSampler {
 public:
  // Throws when the stream is too short for one window of seq_len + 1 tokens
  // (for `inside`: when no document is, naming the longest).
  enum class Start { kRandom, kDocument, kInside };
  WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed, int64_t first_slot = 0,
                Start start = Start::kRandom);
  // [batch, seq_len + 1] int64, row i from slot first_slot + i: inputs are
  // [:, :-1], targets [:, 1:].
  torch::Tensor batch(int64_t step, int64_t micro, int64_t batch_size) const;
  int64_t seq_len() const { return seq_len_; }

 private:
  uint64_t inside_start(uint64_t draw) const;

  const TokenStream& stream_;
  int64_t seq_len_;
  uint64_t seed_;
  int64_t first_slot_;
  Start start_;
  int64_t eligible_docs_ = 0;  // documents whose start leaves room for a whole window
  // inside: the documents long enough, and the running count of window starts
  // they hold (starts_through_[i] counts those of inside_docs_[0..i]).
  std::vector<int64_t> inside_docs_;
  std::vector<uint64_t> starts_through_;
};

WindowSampler::Start parse_window_start(const std::string& name);

}  // namespace longtrain
