// `aft`: the Attention Free Transformer mixer (Zhai et al. 2021).
//
// x: [B, L, D] -> fused Linear(D, 3D) -> q, k, v: [B, L, D] -> AFT (model/aft.h)
// -> Linear(D, D) -> [B, L, D]. Causal or bidirectional from the model.
//
// Options (model.mixer):
//   variant: simple | local | conv | full   (default simple)
//   window:  s for local and conv, >= 1     (default 64)
//   heads:   kernels for conv, 0 = model.n_heads (default 0)
//   rank:    full only; 0 = an unfactorised [P, P] bias, r > 0 = U Vᵀ with
//            U, V: [P, r]                     (default 0)
//   impl:    auto | cuda | reference          (default auto; model/sparse_mixer.h)
// An option that does not apply to the chosen variant is an error, not ignored.
//
// Parameters and their initialisation: local's bias u [taps] and conv's gain
// and shift [H] start at zero, so both start as AFT-simple (the paper's
// initialisation for conv); conv's raw kernel [H, taps] and full's bias or
// factors are N(0, init_std). P = model.max_positions for full: a longer
// sequence is an error (max_seq_len()).
//
// Kernels: causal simple, local and conv run kernels/aft (a fused chunked scan,
// plus the band for local/conv) when the inputs are on CUDA in bf16/fp16 with
// an even width (per head for conv); full (causal or bidirectional, rank 0 or
// the factorised bias formed by aft_full_bias first) runs kernels/aft's blocked
// GEMM form (aft_full_blocked) on CUDA in bf16/fp16. `auto` takes a kernel when
// it can and the reference otherwise, `cuda` insists (an error says why it
// cannot). Bidirectional simple, local and conv have no kernel yet and run the
// reference.
// RoPE is rejected: AFT has
// no query-key product for it to rotate. Global tokens (MixerContext) are
// ignored: every variant already reaches every allowed position through its
// un-biased global term.
#include <memory>
#include <string>
#include <vector>

#include "kernels/aft/op.h"
#include "model/aft.h"
#include "model/linear.h"
#include "model/mixer.h"
#include "model/no_autocast.h"
#include "model/sparse_mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

// Generation state of AFT-simple: running numerator, denominator and max (aft.h).
struct AftState : MixerState {
  AftSimpleState aft;
};

struct AftOptions : MixerOptions {
  std::string variant = "simple";
  int64_t window = 64;
  int64_t heads = 0;
  int64_t rank = 0;
  SparseImpl impl = SparseImpl::kAuto;
};

std::shared_ptr<const MixerOptions> parse_aft(Section& s) {
  auto o = std::make_shared<AftOptions>();
  s.get("variant", o->variant);
  const std::string& v = o->variant;
  s.check(v == "simple" || v == "local" || v == "conv" || v == "full", "variant",
          "'" + v + "' is not one of: simple, local, conv, full");
  // A key is read when it applies, or when present so that its value is checked
  // before the "does not apply" error.
  const bool banded = v == "local" || v == "conv";
  if (banded || s.has("window")) {
    s.get("window", o->window);
    s.check(o->window >= 1, "window", "must be >= 1, got " + std::to_string(o->window));
    s.check(banded, "window", "applies only to variant local or conv, not '" + v + "'");
  }
  if (v == "conv" || s.has("heads")) {
    s.get("heads", o->heads);
    s.check(o->heads >= 0, "heads", "must be >= 0 (0 takes model.n_heads), got " + std::to_string(o->heads));
    s.check(v == "conv", "heads", "applies only to variant conv, not '" + v + "'");
  }
  if (v == "full" || s.has("rank")) {
    s.get("rank", o->rank);
    s.check(o->rank >= 0, "rank", "must be >= 0 (0: an unfactorised bias), got " + std::to_string(o->rank));
    s.check(v == "full", "rank", "applies only to variant full, not '" + v + "'");
  }
  o->impl = parse_sparse_impl(s);
  return o;
}

class AftMixerImpl : public MixerImpl {
 public:
  AftMixerImpl(const AftOptions& o, const MixerDims& dims) : o_(o), dims_(dims) {
    const int64_t D = dims.d_model;
    TORCH_CHECK(!dims.rope.enabled, "aft: model.positions = rope does not apply (AFT has no query-key ",
                "product to rotate); use learned or none");
    qkv_ = register_module("qkv", torch::nn::Linear(D, 3 * D));
    out_ = register_module("out", torch::nn::Linear(D, D));
    const int64_t taps = aft_num_taps(o.window, dims.causal), P = dims.max_positions;
    auto normal = [&](std::vector<int64_t> shape) { return torch::randn(shape) * dims.init_std; };
    if (o.variant == "local") {
      local_bias_ = register_parameter("local_bias", torch::zeros({taps}));
    } else if (o.variant == "conv") {
      const int64_t H = o.heads > 0 ? o.heads : dims.n_heads;
      TORCH_CHECK(H >= 1 && D % H == 0, "aft conv: d_model ", D, " is not divisible by heads ", H);
      conv_raw_ = register_parameter("conv_kernel", normal({H, taps}));
      conv_gain_ = register_parameter("conv_gain", torch::zeros({H}));
      conv_shift_ = register_parameter("conv_shift", torch::zeros({H}));
    } else if (o.variant == "full") {
      TORCH_CHECK(P >= 1, "aft full: model.max_positions must be >= 1, got ", P);
      if (o.rank == 0) {
        full_bias_ = register_parameter("full_bias", normal({P, P}));
      } else {
        full_u_ = register_parameter("full_u", normal({P, o.rank}));
        full_v_ = register_parameter("full_v", normal({P, o.rank}));
      }
    }
  }

  torch::Tensor forward(const torch::Tensor& x, const MixerContext&) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == dims_.d_model, "aft: x must be [B, L, ", dims_.d_model,
                "], got ", x.sizes());
    const int64_t L = x.size(1);
    TORCH_CHECK(o_.variant != "full" || L <= dims_.max_positions, "aft full: sequence length ", L,
                " exceeds the learned bias table (model.max_positions = ", dims_.max_positions,
                "); raise max_positions or use variant simple, local or conv");
    // [B, L, 3D] -> 3 x [B, L, D]
    auto qkv = linear(qkv_, x).chunk(3, -1);
    const auto &q = qkv[0], &k = qkv[1], &v = qkv[2];
    const bool causal = dims_.causal;
    torch::Tensor y;
    {
      NoAutocast no_autocast;  // the weighted sums accumulate in fp32 (model/no_autocast.h)
      const bool kernel = use_kernel(q);
      if (o_.variant == "simple") {
        y = kernel ? kernels::aft_simple_cuda(q, k, v) : aft_simple(q, k, v, causal);
      } else if (o_.variant == "local") {
        y = kernel ? kernels::aft_band_cuda(q, k, v, local_bias_.unsqueeze(0), o_.window)
                   : aft_local(q, k, v, local_bias_, o_.window, causal);
      } else if (o_.variant == "conv") {
        auto u = aft_conv_kernel(conv_raw_, conv_gain_, conv_shift_);  // [H, taps]
        y = kernel ? kernels::aft_band_cuda(q, k, v, u, o_.window) : aft_conv(q, k, v, u, o_.window, causal);
      } else {
        auto w = o_.rank == 0 ? full_bias_ : aft_full_bias(full_u_, full_v_, L);
        y = kernel ? kernels::aft_full_blocked(q, k, v, w, causal) : aft_full(q, k, v, w, causal);
      }
    }
    return linear(out_, y);
  }

  // Whether forward() takes the kernel for q (throws for impl: cuda when it cannot).
  bool use_kernel(const torch::Tensor& q) const {
    if (o_.impl == SparseImpl::kReference) return false;
    std::string why;
    if (o_.variant == "full") {
      why = kernels::aft_full_kernel_unsupported(q, o_.rank == 0 ? full_bias_ : full_u_);
    } else if (!dims_.causal) {
      why = "bidirectional AFT-" + o_.variant + " has no CUDA kernel yet (only causal; full has both)";
    } else if (o_.variant == "simple") {
      why = kernels::aft_simple_kernel_unsupported(q);
    } else {
      why = kernels::aft_band_kernel_unsupported(q, o_.variant == "conv" ? conv_raw_.size(0) : 1);
    }
    TORCH_CHECK(why.empty() || o_.impl == SparseImpl::kAuto, "aft: impl: cuda cannot run: ", why);
    return why.empty();
  }

  int64_t max_seq_len() const override { return o_.variant == "full" ? dims_.max_positions : -1; }

  std::string step_unsupported() const override {
    if (!dims_.causal) return "bidirectional AFT has no recurrent form";
    if (o_.variant != "simple") return "only AFT-simple has a recurrent form (variant " + o_.variant + ")";
    return "";
  }

  std::unique_ptr<MixerState> initial_state(int64_t batch, const torch::TensorOptions& options) override {
    TORCH_CHECK(step_unsupported().empty(), "aft: ", step_unsupported());
    auto s = std::make_unique<AftState>();
    s->aft = aft_simple_initial_state(batch, dims_.d_model, options);
    return s;
  }

  // O(d) per token: the running sums of aft_simple_step.
  torch::Tensor step(const torch::Tensor& x, MixerState& base) override {
    auto& s = dynamic_cast<AftState&>(base);
    TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "aft step: x must be [B, 1, D], got ", x.sizes());
    auto qkv = linear(qkv_, x.squeeze(1)).chunk(3, -1);  // 3 x [B, D]
    torch::Tensor y;
    {
      NoAutocast no_autocast;
      y = aft_simple_step(qkv[0], qkv[1], qkv[2], s.aft);
    }
    s.position += 1;
    return linear(out_, y.unsqueeze(1));
  }

 private:
  AftOptions o_;
  MixerDims dims_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
  torch::Tensor local_bias_, conv_raw_, conv_gain_, conv_shift_, full_bias_, full_u_, full_v_;
};

MixerRegistration reg("aft", {parse_aft, [](const MixerOptions& o, const MixerDims& dims) -> Mixer {
                                return std::make_shared<AftMixerImpl>(dynamic_cast<const AftOptions&>(o), dims);
                              }});

}  // namespace
}  // namespace longtrain
