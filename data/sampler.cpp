// See sampler.h.
#include "data/sampler.h"

#include <stdexcept>
#include <string>

#include "data/rng.h"

namespace longtrain {

WindowSampler::Start parse_window_start(const std::string& name) {
  if (name == "random") return WindowSampler::Start::kRandom;
  if (name == "document") return WindowSampler::Start::kDocument;
  throw std::invalid_argument("unknown window start '" + name + "' (valid: random, document)");
}

WindowSampler::WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed, int64_t rank,
                             Start start)
    : stream_(stream), seq_len_(seq_len), seed_(seed), rank_(rank), start_(start) {
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
}

torch::Tensor WindowSampler::batch(int64_t step, int64_t micro, int64_t batch_size) const {
  const int64_t width = seq_len_ + 1;
  const auto starts = static_cast<uint64_t>(stream_.tokens.size()) - width + 1;
  auto out = torch::empty({batch_size, width}, torch::kInt64);
  auto* dst = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < batch_size; ++r) {
    const uint64_t draw = mix_keys(seed_, static_cast<uint64_t>(step), static_cast<uint64_t>(micro),
                                   (static_cast<uint64_t>(rank_) << 32) | static_cast<uint64_t>(r));
    const uint64_t start = start_ == Start::kRandom
                               ? draw % starts
                               : static_cast<uint64_t>(stream_.doc_starts[draw % eligible_docs_]);
    const int32_t* src = stream_.tokens.data() + start;
    for (int64_t i = 0; i < width; ++i) dst[r * width + i] = src[i];
  }
  return out;
}

}  // namespace longtrain
