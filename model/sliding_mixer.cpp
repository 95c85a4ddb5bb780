// `sliding`: Longformer attention (Beltagy et al. 2020) — a sliding window per
// layer (windows may grow from bottom to top layers), per-head dilation, and
// optional global tokens with their own q, k, v projections.
//
// Options (model.mixer):
//   window:   int | [per layer] | [[per layer, per head]]  causal: the `window`
//             previous tokens including itself; bidirectional: window/2 each side
//   dilation: same forms (default 1); a dilated head sees every d-th token, so
//             its window spans window*d tokens
//   block:    layout block size (default 64)
//   global_first: the first k tokens are global (default 0)
//   global_token: tokens with this id are global (default -1: none)
//   impl:     auto (default: the CUDA kernel on CUDA in bf16/fp16) | cuda | reference
// Cost O(L * window) time and memory (sparse_attention.h), never L x L.
// Generation keeps a ring buffer of the last `window` keys/values when no head
// is dilated and there are no global tokens (sparse_mixer.h).
#include "model/sparse_mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

struct SlidingOptions : MixerOptions {
  SparseImpl impl = SparseImpl::kAuto;
  PerLayerHead window{{256}};
  PerLayerHead dilation{{1}};
  int64_t block = 64;
  GlobalSpec global;

  void check(const MixerCheck& c) const override {
    check_per_layer_head("window", window, c);
    check_per_layer_head("dilation", dilation, c);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      for (int64_t h = 0; h < c.n_heads; ++h) {
        const int64_t w = per_layer_head(window, l, h), d = per_layer_head(dilation, l, h);
        if (w < 1 || d < 1) throw std::invalid_argument("window and dilation must be >= 1");
        if (w * d >= c.seq_len) {
          throw std::invalid_argument("window " + std::to_string(w) + " x dilation " + std::to_string(d) +
                                      " (layer " + std::to_string(l) + ", head " + std::to_string(h) +
                                      ") is not smaller than train.seq_len " + std::to_string(c.seq_len) +
                                      "; use the full mixer for attention over everything");
        }
      }
    }
  }
};

std::shared_ptr<const MixerOptions> parse(Section& s) {
  auto o = std::make_shared<SlidingOptions>();
  o->impl = parse_sparse_impl(s);
  YAML::Node window = YAML::Node(256), dilation = YAML::Node(1);
  s.get("window", window).get("dilation", dilation).get("block", o->block);
  s.get("global_first", o->global.first).get("global_token", o->global.token);
  try {
    o->window = parse_per_layer_head("window", window);
  } catch (const std::invalid_argument& e) {
    s.fail("window", e.what());
  }
  try {
    o->dilation = parse_per_layer_head("dilation", dilation);
  } catch (const std::invalid_argument& e) {
    s.fail("dilation", e.what());
  }
  s.check(o->block > 0, "block", "must be > 0");
  s.check(o->global.first >= 0, "global_first", "must be >= 0");
  return o;
}

Mixer build(const MixerOptions& base, const MixerDims& dims) {
  const auto& o = static_cast<const SlidingOptions&>(base);
  std::vector<HeadPattern> heads;
  std::vector<int64_t> step_windows;
  bool dilated = false;
  for (int64_t h = 0; h < dims.n_heads; ++h) {
    const int64_t w = per_layer_head(o.window, dims.layer, h), d = per_layer_head(o.dilation, dims.layer, h);
    const int64_t block = o.block;
    const bool causal = dims.causal;
    step_windows.push_back(w);
    dilated = dilated || d > 1;
    heads.push_back({"sliding w" + std::to_string(w) + " d" + std::to_string(d),
                     [=](int64_t L) { return sliding_pattern(L, block, w, d, causal); }});
  }
  auto mixer = std::make_shared<SparseAttentionMixerImpl>(dims, o.block, std::move(heads), o.global, o.impl);
  // A dilated head's window has holes; only plain windows get a ring buffer.
  if (!dilated) mixer->set_step_windows(std::move(step_windows));
  return mixer;
}

MixerRegistration reg("sliding", {parse, build});

}  // namespace
}  // namespace longtrain
