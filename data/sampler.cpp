// See sampler.h.
#include "data/sampler.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "data/rng.h"

namespace longtrain {

WindowSampler::Start parse_window_start(const std::string& name) {
  if (name == "random") return WindowSampler::Start::kRandom;
  if (name == "document") return WindowSampler::Start::kDocument;
  if (name == "inside") return WindowSampler::Start::kInside;
  throw std::invalid_argument("unknown window start '" + name + "' (valid: random, document, inside)");
}

WindowSampler::WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed, int64_t first_slot,
                             Start start)
    : stream_(stream), seq_len_(seq_len), seed_(seed), first_slot_(first_slot), start_(start) {
  const auto n = static_cast<int64_t>(stream.tokens.size());
  if (n < seq_len + 1) {
    throw std::runtime_error("training data has " + std::to_string(n) +
                             " tokens, fewer than one window of seq_len + 1 = " +
                             std::to_string(seq_len + 1));
  }
  if (start_ == Start::kDocument) {
    // doc_starts is increasing: the eligible documents are a prefix.
    while (eligible_docs_ < stream.num_docs() && stream.doc_starts[eligible_docs_] + seq_len + 1 <= n) {
      ++eligible_docs_;
    }
    if (eligible_docs_ == 0) throw std::runtime_error("no document starts a full window of seq_len + 1 tokens");
  }
  if (start_ == Start::kInside) {
    int64_t longest = 0;
    uint64_t starts = 0;
    for (int64_t d = 0; d < stream.num_docs(); ++d) {
      const int64_t len = stream.doc_end(d) - stream.doc_starts[d];  // <eos> excluded
      longest = std::max(longest, len);
      if (len < seq_len + 1) continue;
      starts += static_cast<uint64_t>(len - seq_len);
      inside_docs_.push_back(d);
      starts_through_.push_back(starts);
    }
    if (inside_docs_.empty()) {
      throw std::runtime_error("window_start 'inside' needs a document of at least seq_len + 1 = " +
                               std::to_string(seq_len + 1) + " tokens, but the longest of the " +
                               std::to_string(stream.num_docs()) + " has " + std::to_string(longest) +
                               " (lower train.seq_len or use window_start random)");
    }
  }
}

uint64_t WindowSampler::inside_start(uint64_t draw) const {
  const uint64_t k = draw % starts_through_.back();
  const auto i = static_cast<size_t>(std::upper_bound(starts_through_.begin(), starts_through_.end(), k) -
                                     starts_through_.begin());
  const uint64_t before = i == 0 ? 0 : starts_through_[i - 1];
  return static_cast<uint64_t>(stream_.doc_starts[inside_docs_[i]]) + (k - before);
}

torch::Tensor WindowSampler::batch(int64_t step, int64_t micro, int64_t batch_size) const {
  const int64_t width = seq_len_ + 1;
  const auto starts = static_cast<uint64_t>(stream_.tokens.size()) - width + 1;
  auto out = torch::empty({batch_size, width}, torch::kInt64);
  auto* dst = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < batch_size; ++r) {
    // The key of slot s is the one (rank 0, row s) had before slots were
    // global, so single-process runs draw what they always drew.
    const uint64_t draw = mix_keys(seed_, static_cast<uint64_t>(step), static_cast<uint64_t>(micro),
                                   static_cast<uint64_t>(first_slot_ + r));
    uint64_t start = 0;
    switch (start_) {
      case Start::kRandom: start = draw % starts; break;
      case Start::kDocument: start = static_cast<uint64_t>(stream_.doc_starts[draw % eligible_docs_]); break;
      case Start::kInside: start = inside_start(draw); break;
    }
    const int32_t* src = stream_.tokens.data() + start;
    for (int64_t i = 0; i < width; ++i) dst[r * width + i] = src[i];
  }
  return out;
}

}  // namespace longtrain
