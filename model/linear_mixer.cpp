// `linear`: linear attention as a mixer (math and shapes in linear_attention.h).
//
// x [B, L, D] -> fused qkv projection -> q, k, v [B, H, L, Dh] -> φ(q), φ(k)
// -> linear_attention_chunked -> [B, L, D] -> output projection.
//
// Options (recipe section model.mixer):
//   feature_map: elu+1 | relu | favor | cosformer   (default elu+1)
//   chunk: 64            causal scan chunk C
//   eps: 1e-6            denominator guard
//   normalize: true      false keeps the numerator only
//   decay: none | fixed | learned   per-head γ_h (RetNet / Lightning Attention)
//   decay_init: retnet | <number>   retnet: γ_h = 1 − 2^(−5−h) (RetNet, Sun et
//                        al. 2023), memories 1/(1−γ) of 32, 64, 128, … tokens
//                        doubling per head, so short- and long-range heads
//                        coexist; a number sets every head to that γ.
//   favor_features: m    FAVOR+ random features (default: head dim)
//   redraw_interval: 0   redraw the FAVOR+ projection every this many training
//                        forward calls (0: never)
//   seed: 0              FAVOR+ seed; layer l draws from seed + l
//   impl: auto           auto | cuda | reference: the fused CUDA kernel
//                        (kernels/linear_attention/op.h) on CUDA in bf16 for
//                        causal attention with feature dim = head dim = 64 or
//                        128 and a fixed decay (or none, or a learned one in
//                        generation); auto falls back to the reference
//                        otherwise, cuda says why it cannot. `chunk` applies
//                        to the reference.
//
// Limits: RoPE (dims.rope) is ignored, see linear_attention.h; no attention
// dropout (there is no attention matrix to drop from). Causal cosformer uses
// the horizon M = max_positions, so the weight of a pair depends only on its
// positions and not on the batch's length (which the recurrent form needs);
// bidirectional cosformer uses M = L as in the paper.
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/linear_attention/op.h"
#include "model/linear.h"
#include "model/linear_attention.h"
#include "model/mixer.h"
#include "model/sparse_mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

// Generation state: the running S, z of linear_attention.h's recurrent form.
struct LinearState : MixerState {
  LinearAttentionState la;
};

struct LinearOptions : MixerOptions {
  std::string feature_map = "elu+1";
  int64_t chunk = 64;
  double eps = 1e-6;
  bool normalize = true;
  std::string decay = "none";
  std::string decay_init = "retnet";
  int64_t favor_features = 0;  // 0: head dim
  int64_t redraw_interval = 0;
  int64_t seed = 0;
  SparseImpl impl = SparseImpl::kAuto;
};

// Per-head initial γ: [H] fp32.
torch::Tensor initial_decay(const LinearOptions& o, int64_t H) {
  if (o.decay_init == "retnet") {
    return 1 - torch::pow(2.0, -5 - torch::arange(H, torch::kFloat64)).to(torch::kFloat32);
  }
  return torch::full({H}, std::stod(o.decay_init), torch::kFloat32);
}

std::shared_ptr<const MixerOptions> parse_linear(Section& s) {
  auto o = std::make_shared<LinearOptions>();
  s.get("feature_map", o->feature_map).get("chunk", o->chunk).get("eps", o->eps).get("normalize", o->normalize);
  s.get("decay", o->decay);
  o->impl = parse_sparse_impl(s);
  // A key that applies only to some settings is read (and so lands in the
  // resolved recipe) when it applies or is present: a default written for a
  // key that does not apply would make the saved recipe fail its own checks
  // when a checkpoint is loaded again (eval, resume).
  const bool favor_map = o->feature_map == "favor";
  if (o->decay != "none" || s.has("decay_init")) s.get("decay_init", o->decay_init);
  if (favor_map || s.has("favor_features")) s.get("favor_features", o->favor_features);
  if (favor_map || s.has("redraw_interval")) s.get("redraw_interval", o->redraw_interval);
  if (favor_map || s.has("seed")) s.get("seed", o->seed);
  FeatureMap map = FeatureMap::kEluPlusOne;
  try {
    map = parse_feature_map(o->feature_map);
  } catch (const std::invalid_argument& e) {
    s.fail("feature_map", e.what());
  }
  s.check(o->chunk > 0, "chunk", "must be > 0 (tokens per chunk of the causal scan), got " + std::to_string(o->chunk));
  s.check(o->eps > 0, "eps", "must be > 0 (it keeps the denominator away from 0)");
  s.check(o->decay == "none" || o->decay == "fixed" || o->decay == "learned", "decay",
          "'" + o->decay + "' is not one of: none, fixed, learned");
  s.check(o->decay != "none" || !s.has("decay_init"), "decay_init", "is set but decay is none");
  if (o->decay != "none" && o->decay_init != "retnet") {
    double g = 0;
    try {
      size_t used = 0;
      g = std::stod(o->decay_init, &used);
      if (used != o->decay_init.size()) throw std::invalid_argument("trailing characters");
    } catch (const std::exception&) {
      s.fail("decay_init", "'" + o->decay_init + "' is neither 'retnet' nor a number");
    }
    // A learned γ is sigmoid(logit), which never reaches 1.
    const bool learned = o->decay == "learned";
    s.check(g > 0 && (learned ? g < 1 : g <= 1), "decay_init",
            std::string("must lie in (0, 1") + (learned ? ")" : "]") + " for decay: " + o->decay + ", got " +
                o->decay_init);
  }
  const bool favor = map == FeatureMap::kFavor;
  s.check(favor || !s.has("favor_features"), "favor_features", "only applies to feature_map: favor");
  s.check(favor || !s.has("redraw_interval"), "redraw_interval", "only applies to feature_map: favor");
  s.check(favor || !s.has("seed"), "seed", "only applies to feature_map: favor");
  s.check(o->favor_features >= 0, "favor_features", "must be >= 0 (0: the head dimension)");
  s.check(o->redraw_interval >= 0, "redraw_interval", "must be >= 0 (0: never redraw)");
  s.check(o->seed >= 0, "seed", "must be >= 0");
  return o;
}

class LinearMixerImpl : public MixerImpl {
 public:
  LinearMixerImpl(const LinearOptions& o, const MixerDims& dims)
      : dims_(dims), map_(parse_feature_map(o.feature_map)), opts_(o) {
    TORCH_CHECK(dims.d_model % dims.n_heads == 0, "linear attention: d_model ", dims.d_model,
                " is not divisible by n_heads ", dims.n_heads);
    const int64_t H = dims.n_heads, Dh = dims.d_model / H;
    qkv_ = register_module("qkv", torch::nn::Linear(dims.d_model, 3 * dims.d_model));
    out_ = register_module("out", torch::nn::Linear(dims.d_model, dims.d_model));
    if (map_ == FeatureMap::kFavor) {
      // Buffers, so that a checkpoint restores the projection in force and
      // where the redraw schedule stands.
      favor_m_ = o.favor_features > 0 ? o.favor_features : Dh;
      favor_proj_ = register_buffer("favor_proj", favor_projection(favor_m_, Dh, layer_seed(), 0));
      favor_calls_ = register_buffer("favor_calls", torch::zeros({}, torch::kInt64));
      favor_draws_ = register_buffer("favor_draws", torch::zeros({}, torch::kInt64));
    }
    if (o.decay == "fixed") {
      decay_ = register_buffer("decay", initial_decay(o, H));
    } else if (o.decay == "learned") {
      // γ = sigmoid(logit_init + logit): the learned part is an offset that
      // starts at 0 because LanguageModel::init_weights re-initialises every
      // parameter (1-D ones to zero); the initial γ lives in a buffer it leaves alone.
      auto g = initial_decay(o, H).to(torch::kFloat64);
      decay_logit_init_ = register_buffer("decay_logit_init", torch::log(g / (1 - g)).to(torch::kFloat32));
      decay_logit_ = register_parameter("decay_logit", torch::zeros({H}));
    }
  }

  torch::Tensor forward(const torch::Tensor& x, const MixerContext&) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == dims_.d_model, "linear attention: x must be [B, L, ", dims_.d_model,
                "], got ", x.sizes());
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2), H = dims_.n_heads, Dh = D / H;
    if (favor_proj_.defined() && is_training() && opts_.redraw_interval > 0) advance_redraw_schedule();
    auto [q, k, v] = split_qkv(linear(qkv_, x), H, RopeSpec{});  // views: [B, H, L, Dh] each
    if (map_ == FeatureMap::kFavor) {
      // Dh^(-1/4) on each side: φ(q)·φ(k) then estimates exp(q·k / sqrt(Dh)),
      // the softmax kernel at the usual temperature.
      const double s = std::pow(static_cast<double>(Dh), -0.25);
      q = q * s;
      k = k * s;
    }
    if (map_ == FeatureMap::kCosformer) {
      TORCH_CHECK(!dims_.causal || L <= dims_.max_positions, "linear attention (cosformer, causal): sequence length ",
                  L, " exceeds the horizon M = max_positions = ", dims_.max_positions);
    }
    const auto spec = feature_spec(L);
    auto phi_q = apply_feature_map(q, spec), phi_k = apply_feature_map(k, spec);
    torch::Tensor y;
    if (use_kernel(phi_q, v)) {
      const auto gamma = decay();
      y = kernels::linear_attention_cuda(phi_q.to(torch::kBFloat16), phi_k.to(torch::kBFloat16), v,
                                         gamma.defined() ? gamma.detach() : gamma, opts_.normalize, opts_.eps);
    } else {
      y = linear_attention_chunked(phi_q, phi_k, v, attention_options());
    }
    // [B, H, L, Dh] -> [B, L, D]
    return linear(out_, y.transpose(1, 2).reshape({B, L, D}));
  }

  std::string step_unsupported() const override {
    return dims_.causal ? "" : "bidirectional linear attention has no recurrent form";
  }

  std::unique_ptr<MixerState> initial_state(int64_t batch, const torch::TensorOptions& options) override {
    TORCH_CHECK(step_unsupported().empty(), "linear attention: ", step_unsupported());
    const int64_t H = dims_.n_heads, Dh = dims_.d_model / H;
    FeatureMapSpec spec = feature_spec(0);
    auto s = std::make_unique<LinearState>();
    s->la = linear_attention_initial_state(batch, H, feature_dim(spec, Dh), Dh, options);
    return s;
  }

  // The recurrent form: O(F·Dv) per token whatever the position.
  torch::Tensor step(const torch::Tensor& x, MixerState& base) override {
    auto& s = dynamic_cast<LinearState&>(base);
    TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "linear attention step: x must be [B, 1, D], got ", x.sizes());
    const int64_t B = x.size(0), D = x.size(2), H = dims_.n_heads, Dh = D / H;
    TORCH_CHECK(map_ != FeatureMap::kCosformer || s.position < dims_.max_positions,
                "linear attention (cosformer, causal): position ", s.position,
                " is beyond the horizon M = max_positions = ", dims_.max_positions);
    // [B, 1, 3D] -> [3, B, H, 1, Dh]
    auto qkv = linear(qkv_, x).view({B, 1, 3, H, Dh}).permute({2, 0, 3, 1, 4});
    auto q = qkv[0], k = qkv[1];
    if (map_ == FeatureMap::kFavor) {
      const double sc = std::pow(static_cast<double>(Dh), -0.25);  // as in forward()
      q = q * sc;
      k = k * sc;
    }
    const auto spec = feature_spec(0);
    auto phi_q = apply_feature_map(q, spec, s.position), phi_k = apply_feature_map(k, spec, s.position);
    torch::Tensor y;
    if (use_kernel(phi_q, qkv[2]) && s.la.S.scalar_type() == torch::kFloat32 && s.la.S.is_contiguous() &&
        s.la.z.is_contiguous()) {
      y = kernels::linear_attention_step_cuda(phi_q.to(torch::kBFloat16), phi_k.to(torch::kBFloat16), qkv[2], s.la.S,
                                              s.la.z, decay(), opts_.normalize, opts_.eps);
    } else {
      y = linear_attention_step(phi_q, phi_k, qkv[2], s.la, attention_options());
    }
    s.position += 1;
    return linear(out_, y.transpose(1, 2).reshape({B, 1, D}));
  }

  int64_t max_seq_len() const override {
    return map_ == FeatureMap::kCosformer && dims_.causal ? dims_.max_positions : -1;
  }

  // [H] γ in force (undefined: no decay).
  torch::Tensor decay() const {
    if (decay_logit_.defined()) return torch::sigmoid(decay_logit_init_ + decay_logit_);
    return decay_;
  }

 private:
  // Whether the fused kernel runs for these inputs (throws for impl: cuda
  // when it cannot). v's dtype is the compute dtype (bf16 under autocast).
  bool use_kernel(const torch::Tensor& phi_q, const torch::Tensor& v) const {
    if (opts_.impl == SparseImpl::kReference) return false;
    std::string why = dims_.causal ? "" : "the kernel is causal only";
    if (why.empty() && decay_logit_.defined() && torch::GradMode::is_enabled()) {
      why = "the kernel does not differentiate a learned decay";
    }
    if (why.empty()) why = kernels::linear_attention_kernel_unsupported(v, phi_q.size(-1));
    TORCH_CHECK(why.empty() || opts_.impl == SparseImpl::kAuto, "linear attention, impl: cuda cannot run: ", why);
    return why.empty();
  }

  // Bidirectional cosformer's horizon is the batch length L; causal uses
  // max_positions, independent of L (see the top of this file).
  FeatureMapSpec feature_spec(int64_t L) const {
    FeatureMapSpec spec;
    spec.map = map_;
    spec.favor_proj = favor_proj_;
    if (map_ == FeatureMap::kCosformer) spec.cosformer_horizon = dims_.causal ? dims_.max_positions : L;
    return spec;
  }

  LinearAttentionOptions attention_options() const {
    LinearAttentionOptions la;
    la.causal = dims_.causal;
    la.chunk = opts_.chunk;
    la.normalize = opts_.normalize;
    la.eps = opts_.eps;
    la.decay = decay();
    return la;
  }

  uint64_t layer_seed() const { return static_cast<uint64_t>(opts_.seed) + static_cast<uint64_t>(dims_.layer); }

  // Training forward n (0-based) uses draw floor(n / redraw_interval).
  void advance_redraw_schedule() {
    torch::NoGradGuard no_grad;
    const int64_t calls = favor_calls_.item<int64_t>();
    if (calls > 0 && calls % opts_.redraw_interval == 0) {
      favor_draws_.add_(1);
      const int64_t Dh = dims_.d_model / dims_.n_heads;
      favor_proj_.copy_(favor_projection(favor_m_, Dh, layer_seed(), favor_draws_.item<int64_t>()));
    }
    favor_calls_.add_(1);
  }

  MixerDims dims_;
  FeatureMap map_;
  LinearOptions opts_;
  int64_t favor_m_ = 0;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
  torch::Tensor favor_proj_, favor_calls_, favor_draws_;
  torch::Tensor decay_, decay_logit_init_, decay_logit_;
};

MixerRegistration reg("linear", {parse_linear, [](const MixerOptions& o, const MixerDims& dims) -> Mixer {
                                   return std::make_shared<LinearMixerImpl>(static_cast<const LinearOptions&>(o),
                                                                            dims);
                                 }});

}  // namespace
}  // namespace longtrain
