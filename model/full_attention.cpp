// `full`: softmax attention over all (causal: all earlier) positions.
//
// q, k, v: [B, H, L, Dh] from one fused projection; the product goes through
// LibTorch's scaled_dot_product_attention, which picks flash/cuDNN/efficient
// kernels on CUDA and a memory-efficient math path on CPU.
// Generation: a KV cache of every earlier position's k, v ([B, H, n, Dh]),
// O(n) work per token.
// Options: none. Limits: quadratic in L, as the method is.
#include "model/linear.h"
#include "model/mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

struct FullOptions : MixerOptions {};

struct KvCache : MixerState {
  torch::Tensor k, v;  // [B, H, n, Dh]
};

class FullAttentionImpl : public MixerImpl {
 public:
  explicit FullAttentionImpl(const MixerDims& dims) : dims_(dims) {
    TORCH_CHECK(dims.d_model % dims.n_heads == 0, "full attention: d_model ", dims.d_model,
                " is not divisible by n_heads ", dims.n_heads);
    qkv_ = register_module("qkv", torch::nn::Linear(dims.d_model, 3 * dims.d_model));
    out_ = register_module("out", torch::nn::Linear(dims.d_model, dims.d_model));
  }

  torch::Tensor forward(const torch::Tensor& x, const MixerContext&) override {
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2), H = dims_.n_heads;
    auto [q, k, v] = split_qkv(linear(qkv_, x), H, dims_.rope);  // [B, H, L, Dh] each
    const double p = is_training() ? dims_.dropout : 0.0;
    auto y = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, p,
                                              /*is_causal=*/dims_.causal);
    // [B, H, L, Dh] -> [B, L, D]
    return linear(out_, y.transpose(1, 2).reshape({B, L, D}));
  }

  std::string step_unsupported() const override {
    return dims_.causal ? "" : "bidirectional attention has no incremental form";
  }

  std::unique_ptr<MixerState> initial_state(int64_t batch, const torch::TensorOptions& options) override {
    TORCH_CHECK(step_unsupported().empty(), "full attention: ", step_unsupported());
    const int64_t H = dims_.n_heads, Dh = dims_.d_model / H;
    auto s = std::make_unique<KvCache>();
    s->k = torch::zeros({batch, H, 0, Dh}, options);
    s->v = torch::zeros({batch, H, 0, Dh}, options);
    return s;
  }

  torch::Tensor step(const torch::Tensor& x, MixerState& base) override {
    auto& s = dynamic_cast<KvCache&>(base);
    const int64_t B = x.size(0), D = x.size(2), H = dims_.n_heads;
    TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "full attention step: x must be [B, 1, D], got ", x.sizes());
    // [B, 1, 3D] -> [3, B, H, 1, Dh]
    auto qkv = linear(qkv_, x).view({B, 1, 3, H, D / H}).permute({2, 0, 3, 1, 4});
    auto q = qkv[0], k = qkv[1];
    if (dims_.rope.enabled) {
      q = apply_rope(q, dims_.rope, s.position);
      k = apply_rope(k, dims_.rope, s.position);
    }
    s.k = torch::cat({s.k, k}, 2);
    s.v = torch::cat({s.v, qkv[2]}, 2);
    s.position += 1;
    // Every cached position is earlier than this one: no mask.
    auto y = at::scaled_dot_product_attention(q, s.k, s.v);  // [B, H, 1, Dh]
    return linear(out_, y.transpose(1, 2).reshape({B, 1, D}));
  }

 private:
  MixerDims dims_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

MixerRegistration reg("full", {
    [](Section&) { return std::make_shared<const FullOptions>(); },
    [](const MixerOptions&, const MixerDims& dims) -> Mixer {
      return std::make_shared<FullAttentionImpl>(dims);
    }});

}  // namespace
}  // namespace longtrain
