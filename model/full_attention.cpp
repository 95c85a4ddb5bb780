// `full`: softmax attention over all (causal: all earlier) positions.
//
// q, k, v: [B, H, L, Dh] from one fused projection; the product goes through
// LibTorch's scaled_dot_product_attention, which picks flash/cuDNN/efficient
// kernels on CUDA and a memory-efficient math path on CPU.
// Options: none. Limits: quadratic in L, as the method is.
#include "model/mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

struct FullOptions : MixerOptions {};

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
    // [B, L, 3D] -> [3, B, H, L, Dh]
    auto qkv = qkv_->forward(x).view({B, L, 3, H, D / H}).permute({2, 0, 3, 1, 4});
    const double p = is_training() ? dims_.dropout : 0.0;
    auto q = qkv[0], k = qkv[1];
    if (dims_.rope.enabled) {
      q = apply_rope(q, dims_.rope);
      k = apply_rope(k, dims_.rope);
    }
    auto y = at::scaled_dot_product_attention(q, k, qkv[2], /*attn_mask=*/{}, p,
                                              /*is_causal=*/dims_.causal);
    // [B, H, L, Dh] -> [B, L, D]
    return out_->forward(y.transpose(1, 2).reshape({B, L, D}));
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
