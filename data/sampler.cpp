// See sampler.h.
#include "data/sampler.h"

#include <stdexcept>
#include <string>

#include "data/rng.h"

namespace longtrain {

WindowSampler::WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed, int64_t rank)
    : stream_(stream), seq_len_(seq_len), seed_(seed), rank_(rank) {
  const auto n = static_cast<int64_t>(stream.tokens.size());
  if (n < seq_len + 1) {
    throw std::runtime_error("training data has " + std::to_string(n) +
                             " tokens, fewer than one window of seq_len + 1 = " +
                             std::to_string(seq_len + 1));
  }
}

torch::Tensor WindowSampler::batch(int64_t step, int64_t micro, int64_t batch_size) const {
  const int64_t width = seq_len_ + 1;
  const auto starts = static_cast<uint64_t>(stream_.tokens.size()) - width + 1;
  auto out = torch::empty({batch_size, width}, torch::kInt64);
  auto* dst = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < batch_size; ++r) {
    const uint64_t start =
        mix_keys(seed_, static_cast<uint64_t>(step), static_cast<uint64_t>(micro),
                 (static_cast<uint64_t>(rank_) << 32) | static_cast<uint64_t>(r)) % starts;
    const int32_t* src = stream_.tokens.data() + start;
    for (int64_t i = 0; i < width; ++i) dst[r * width + i] = src[i];
  }
  return out;
}

}  // namespace longtrain
