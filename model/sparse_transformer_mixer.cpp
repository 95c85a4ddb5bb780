// `sparse`: the Sparse Transformer's factorised patterns (Child et al. 2019),
// both heads' halves merged into one pattern per head:
//   strided: keys within `stride` of the query, or a multiple of `stride` away;
//   fixed:   keys in the query's own `stride`-long segment, or among the last
//            `summary` positions of any segment.
// Options: pattern (strided), stride (64), summary (fixed only: min(8, stride)), block (64),
// impl (auto | cuda | reference, see sparse_mixer.h).
#include "model/sparse_mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

struct SparseOptions : MixerOptions {
  SparseImpl impl = SparseImpl::kAuto;
  std::string pattern = "strided";
  int64_t stride = 64, summary = 8, block = 64;

  void check(const MixerCheck& c) const override {
    if (stride >= c.seq_len) {
      throw std::invalid_argument("stride " + std::to_string(stride) + " is not smaller than train.seq_len " +
                                  std::to_string(c.seq_len));
    }
  }
};

std::shared_ptr<const MixerOptions> parse(Section& s) {
  auto o = std::make_shared<SparseOptions>();
  o->impl = parse_sparse_impl(s);
  s.get("pattern", o->pattern).get("stride", o->stride).get("block", o->block);
  s.check(o->pattern == "strided" || o->pattern == "fixed", "pattern",
          "'" + o->pattern + "' is not one of: strided, fixed");
  s.check(o->stride >= 1, "stride", "must be >= 1");
  // summary is read only for `fixed`, with its default in place first, so the
  // resolved recipe holds the value in force and a strided recipe, saved in a
  // checkpoint and parsed again, does not trip over a summary it never set.
  if (o->pattern == "fixed") {
    o->summary = std::min<int64_t>(8, o->stride);
    s.get("summary", o->summary);
    s.check(o->summary >= 1 && o->summary <= o->stride, "summary", "must be in [1, stride]");
  } else {
    s.check(!s.has("summary"), "summary", "only applies to pattern: fixed");
  }
  s.check(o->block > 0, "block", "must be > 0");
  return o;
}

Mixer build(const MixerOptions& base, const MixerDims& dims) {
  const auto o = static_cast<const SparseOptions&>(base);
  const bool causal = dims.causal;
  HeadPattern p{o.pattern + " " + std::to_string(o.stride) + "/" + std::to_string(o.summary), [=](int64_t L) {
                  return o.pattern == "strided" ? strided_pattern(L, o.block, o.stride, causal)
                                                : fixed_pattern(L, o.block, o.stride, o.summary, causal);
                }};
  return std::make_shared<SparseAttentionMixerImpl>(dims, o.block, std::vector<HeadPattern>(dims.n_heads, p),
                                                    GlobalSpec{}, o.impl);
}

MixerRegistration reg("sparse", {parse, build});

}  // namespace
}  // namespace longtrain
