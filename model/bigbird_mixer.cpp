// `bigbird`: BigBird block-sparse attention (Zaheer et al. 2020): per query
// block, `window_blocks` neighbouring blocks, `global_blocks` leading blocks
// (which see everything), and `random_blocks` random ones drawn from `seed`
// (identical across ranks and runs). Causal variant (which HF's BigBird lacks):
// the window is the block itself and the ones before, random blocks come from
// the past, and the diagonal block is masked per element.
//
// Options: block (64), window_blocks (3), global_blocks (2), random_blocks (3), seed (0),
// impl (auto: the CUDA kernel on CUDA in bf16/fp16, else the reference; cuda; reference).
// The training sequence length must be a multiple of `block`; other lengths
// (evaluation) work, the last block being short.
#include "model/sparse_mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

struct BigBirdOptions : MixerOptions {
  SparseImpl impl = SparseImpl::kAuto;
  int64_t block = 64, window_blocks = 3, global_blocks = 2, random_blocks = 3, seed = 0;

  void check(const MixerCheck& c) const override {
    if (c.seq_len % block != 0) {
      throw std::invalid_argument("block " + std::to_string(block) + " does not divide train.seq_len " +
                                  std::to_string(c.seq_len));
    }
    const int64_t needed = (window_blocks + global_blocks + random_blocks) * block;
    if (needed >= c.seq_len) {
      throw std::invalid_argument("window + global + random blocks cover " + std::to_string(needed) +
                                  " tokens, not fewer than train.seq_len " + std::to_string(c.seq_len) +
                                  "; use the full mixer");
    }
  }
};

std::shared_ptr<const MixerOptions> parse(Section& s) {
  auto o = std::make_shared<BigBirdOptions>();
  o->impl = parse_sparse_impl(s);
  s.get("block", o->block).get("window_blocks", o->window_blocks).get("global_blocks", o->global_blocks);
  s.get("random_blocks", o->random_blocks).get("seed", o->seed);
  s.check(o->block > 0, "block", "must be > 0");
  s.check(o->window_blocks >= 1, "window_blocks", "must be >= 1");
  s.check(o->global_blocks >= 0, "global_blocks", "must be >= 0");
  s.check(o->random_blocks >= 0, "random_blocks", "must be >= 0");
  return o;
}

Mixer build(const MixerOptions& base, const MixerDims& dims) {
  const auto o = static_cast<const BigBirdOptions&>(base);
  // One layout for all heads; the seed also mixes in the layer so layers differ.
  const uint64_t seed = static_cast<uint64_t>(o.seed) * 1000003ULL + static_cast<uint64_t>(dims.layer);
  const bool causal = dims.causal;
  HeadPattern p{"bigbird layer " + std::to_string(dims.layer), [=](int64_t L) {
                  return bigbird_pattern(L, o.block, o.window_blocks, o.global_blocks, o.random_blocks, seed, causal);
                }};
  return std::make_shared<SparseAttentionMixerImpl>(dims, o.block, std::vector<HeadPattern>(dims.n_heads, p),
                                                    GlobalSpec{}, o.impl);
}

MixerRegistration reg("bigbird", {parse, build});

}  // namespace
}  // namespace longtrain
