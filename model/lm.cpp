// See lm.h.
#include "model/lm.h"

#include <cmath>

#include <ATen/autocast_mode.h>

#include "kernels/mlp/op.h"
#include "kernels/norm/op.h"
#include "model/chunked_cross_entropy.h"
#include "model/linear.h"
#include "model/no_autocast.h"

namespace longtrain {

NormImpl::NormImpl(const std::string& kind, int64_t dim) : rms_(kind == "rmsnorm"), eps_(rms_ ? 1e-6 : 1e-5) {
  TORCH_CHECK(kind == "layernorm" || kind == "rmsnorm", "unknown norm '", kind,
              "' (valid: layernorm, rmsnorm)");
  weight_ = register_parameter("weight", torch::ones({dim}));
  if (!rms_) bias_ = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  // A bf16 stream (model.residual: bf16) stays bf16: autocast would run
  // layer_norm in fp32 and hand every following matmul an fp32 copy to cast.
  // The statistics are accumulated in fp32 either way (LibTorch's kernel; the
  // rms path below), and the fp32 weights are cast (d_model elements).
  const bool reduced = x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf;
  if (!rms_) {
    if (!reduced) return torch::layer_norm(x, {x.size(-1)}, weight_, bias_, eps_);
    NoAutocast no_autocast;
    return torch::layer_norm(x, {x.size(-1)}, weight_.to(x.scalar_type()), bias_.to(x.scalar_type()), eps_);
  }
  // Statistics in fp32 even under bf16 autocast: a bf16 mean of squares over
  // d_model elements loses the small ones.
  auto xf = x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return y.to(x.scalar_type()) * (reduced ? weight_.to(x.scalar_type()) : weight_);
}

std::pair<torch::Tensor, torch::Tensor> NormImpl::add_forward(const torch::Tensor& x, const torch::Tensor& branch) {
  // bias_ is undefined for RMSNorm, which is how the kernel tells the two apart.
  if (kernels::add_norm_kernel_unsupported(x, branch, weight_, bias_).empty()) {
    auto [y, sum] = kernels::add_norm_cuda(x, branch, weight_, bias_, eps_);
    return {branch.defined() ? sum : x, y};
  }
  auto s = branch.defined() ? x + branch : x;
  return {s, forward(s)};
}

BlockImpl::BlockImpl(const ModelConfig& cfg, int64_t layer) : dropout_(cfg.dropout) {
  norm1_ = register_module("norm1", Norm(cfg.norm, cfg.d_model));
  norm2_ = register_module("norm2", Norm(cfg.norm, cfg.d_model));
  MixerDims dims;
  dims.d_model = cfg.d_model;
  dims.n_heads = cfg.n_heads;
  dims.layer = layer;
  dims.n_layers = cfg.n_layers;
  dims.max_positions = cfg.max_positions;
  dims.causal = cfg.causal;
  dims.dropout = cfg.dropout;
  dims.init_std = cfg.init_std;
  dims.rope = {cfg.positions == "rope", cfg.rope_base, cfg.rope_scale};
  mixer_ = register_module("mixer", build_mixer(cfg.mixer_for(layer), dims));
  const auto hidden = static_cast<int64_t>(std::llround(cfg.mlp_ratio * cfg.d_model));
  fc_ = register_module("fc", torch::nn::Linear(cfg.d_model, hidden));
  proj_ = register_module("proj", torch::nn::Linear(hidden, cfg.d_model));
}

std::vector<torch::Tensor> BlockImpl::parameters_of(std::initializer_list<torch::nn::Module*> modules) const {
  std::vector<torch::Tensor> out;
  for (auto* m : modules) {
    for (const auto& p : m->parameters()) out.push_back(p);
  }
  return out;
}

torch::Tensor BlockImpl::mixer_branch(const torch::Tensor& x, const MixerContext& ctx) {
  return mixer_->forward(norm1_->forward(x), ctx);
}

ResidualStream BlockImpl::forward(const ResidualStream& in, const MixerContext& ctx) {
  if (checkpointing_ == Checkpointing::kNone) return block(in, ctx, false);
  // Checkpointed blocks keep one tensor per block (the stream's value) as
  // their saved input, so the stream is summed here.
  const torch::Tensor x = in.value();
  if (checkpointing_ == Checkpointing::kMixer) return block({x, {}}, ctx, true);
  auto fn = [this, ctx](const std::vector<torch::Tensor>& in) {
    return std::vector<torch::Tensor>{block({in[0], {}}, ctx, false).value()};
  };
  return {checkpoint(fn, {x}, parameters())[0], {}};
}

ResidualStream BlockImpl::block(const ResidualStream& in, const MixerContext& ctx, bool checkpoint_mixer) {
  const bool drop = is_training() && dropout_ > 0;
  torch::Tensor x, h;
  if (checkpoint_mixer) {  // recomputes norm1 too: the checkpoint keeps x, as without it
    x = in.value();
    auto fn = [this, ctx](const std::vector<torch::Tensor>& in) {
      return std::vector<torch::Tensor>{mixer_branch(in[0], ctx)};
    };
    h = checkpoint(fn, {x}, parameters_of({norm1_.get(), mixer_.get()}))[0];
  } else {
    torch::Tensor normed;
    std::tie(x, normed) = norm1_->add_forward(in.residual, in.branch);
    h = mixer_->forward(normed, ctx);
  }
  auto [y, normed2] = norm2_->add_forward(x, drop ? torch::dropout(h, dropout_, true) : h);
  auto m = mlp(normed2);
  return {y, drop ? torch::dropout(m, dropout_, true) : m};
}

torch::Tensor BlockImpl::mlp(const torch::Tensor& x) {
  if (kernels::gelu_mlp_unsupported(x, fc_->weight, fc_->bias, proj_->weight, proj_->bias).empty()) {
    return kernels::gelu_mlp_cuda(x, fc_->weight, fc_->bias, proj_->weight, proj_->bias);
  }
  return linear(proj_, torch::gelu(linear(fc_, x), "tanh"));
}

torch::Tensor BlockImpl::step(const torch::Tensor& x, MixerState& state) {
  auto y = x + mixer_->step(norm1_->forward(x), state);
  return y + mlp(norm2_->forward(y));
}

LanguageModelImpl::LanguageModelImpl(const ModelConfig& cfg) : cfg_(cfg) {
  TORCH_CHECK(cfg.vocab_size > 0, "model.vocab_size must be set (got ", cfg.vocab_size, ")");
  tok_emb_ = register_module("tok_emb", torch::nn::Embedding(cfg.vocab_size, cfg.d_model));
  if (cfg.positions == "learned") {
    pos_emb_ = register_module("pos_emb", torch::nn::Embedding(cfg.max_positions, cfg.d_model));
  }
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) blocks_->push_back(Block(cfg, i));
  final_norm_ = register_module("final_norm", Norm(cfg.norm, cfg.d_model));
  if (!cfg.tie_embeddings) {
    head_ = register_module("head", torch::nn::Linear(
        torch::nn::LinearOptions(cfg.d_model, cfg.vocab_size).bias(false)));
  }
  init_weights();
}

void LanguageModelImpl::init_weights() {
  torch::NoGradGuard no_grad;
  // GPT-2 initialisation of every Linear and Embedding: N(0, std) weights,
  // zero biases, residual output projections scaled by 1/sqrt(2 * n_layers) so
  // the residual stream's variance does not grow with depth. Other parameters
  // (norms, a mixer's own decay rates or position biases) keep the values their
  // module chose.
  const double resid_std = cfg_.init_std / std::sqrt(2.0 * cfg_.n_layers);
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    auto* module = item.value().get();
    if (auto* linear = dynamic_cast<torch::nn::LinearImpl*>(module)) {
      const bool resid = name.size() >= 4 && (name.compare(name.size() - 4, 4, ".out") == 0 ||
                                             (name.size() >= 5 && name.compare(name.size() - 5, 5, ".proj") == 0));
      linear->weight.normal_(0.0, resid ? resid_std : cfg_.init_std);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* emb = dynamic_cast<torch::nn::EmbeddingImpl*>(module)) {
      emb->weight.normal_(0.0, cfg_.init_std);
    }
  }
}

int64_t LanguageModelImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

torch::Tensor LanguageModelImpl::forward(const torch::Tensor& tokens, const MixerContext& context) {
  return head(hidden(tokens, context));  // [B, L, D] -> [B, L, V]
}

torch::Tensor LanguageModelImpl::head(const torch::Tensor& x) {
  return head_ ? head_->forward(x) : torch::linear(x, tok_emb_->weight);
}

torch::Tensor LanguageModelImpl::loss(const torch::Tensor& tokens, const torch::Tensor& targets,
                                      int64_t loss_chunk, const MixerContext& ctx) {
  TORCH_CHECK(targets.sizes() == tokens.sizes(), "loss: targets ", targets.sizes(), " must match tokens ",
              tokens.sizes());
  auto x = hidden(tokens, ctx);
  const torch::Tensor& weight = head_ ? head_->weight : tok_emb_->weight;  // [V, D]
  const auto flat = x.reshape({-1, x.size(-1)});                            // [B*L, D]
  if (loss_chunk > 0) return chunked_cross_entropy(flat, weight, targets.reshape(-1), loss_chunk);
  auto logits = torch::linear(flat, weight);  // [B*L, V]
  // The softmax in fp32 at least (bf16 logits under autocast); fp64 stays fp64.
  if (logits.scalar_type() != torch::kFloat64) logits = logits.to(torch::kFloat32);
  return torch::nn::functional::cross_entropy(logits, targets.reshape(-1));
}

void LanguageModelImpl::set_checkpointing(Checkpointing c) {
  for (const auto& block : *blocks_) block->as<BlockImpl>()->set_checkpointing(c);
}

torch::Tensor LanguageModelImpl::hidden(const torch::Tensor& tokens, const MixerContext& context) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, L], got ", tokens.sizes());
  const int64_t L = tokens.size(1);
  TORCH_CHECK(!pos_emb_ || L <= cfg_.max_positions, "sequence length ", L,
              " exceeds the position table (model.max_positions = ", cfg_.max_positions,
              "); raise max_positions or extend the table");
  for (int64_t l = 0; l < static_cast<int64_t>(blocks_->size()); ++l) {
    const int64_t limit = (*blocks_)[l]->as<BlockImpl>()->mixer()->max_seq_len();
    TORCH_CHECK(limit < 0 || L <= limit, "sequence length ", L, " exceeds what layer ", l, "'s ",
                cfg_.mixer_for(l).type, " mixer accepts (", limit,
                " positions, model.max_positions); raise max_positions or extend it");
  }
  MixerContext ctx = context;
  ctx.tokens = tokens;
  auto x = tok_emb_->forward(tokens);  // [B, L, D]
  if (pos_emb_) x = x + pos_emb_->forward(torch::arange(L, tokens.options()));
  if (is_training() && cfg_.dropout > 0) x = torch::dropout(x, cfg_.dropout, true);
  if (cfg_.residual == "bf16" && at::autocast::is_autocast_enabled(x.device().type()) &&
      at::autocast::get_autocast_dtype(x.device().type()) == at::kBFloat16) {
    x = x.to(torch::kBFloat16);  // the stream stays bf16 from here (model.residual)
  }
  ResidualStream stream{x, {}};
  for (const auto& block : *blocks_) stream = block->as<BlockImpl>()->forward(stream, ctx);
  return final_norm_->add_forward(stream.residual, stream.branch).second;
}

std::string LanguageModelImpl::step_unsupported() const {
  for (int64_t l = 0; l < static_cast<int64_t>(blocks_->size()); ++l) {
    const std::string why = (*blocks_)[l]->as<BlockImpl>()->mixer()->step_unsupported();
    if (!why.empty()) return "layer " + std::to_string(l) + " (" + cfg_.mixer_for(l).type + "): " + why;
  }
  return "";
}

LmState LanguageModelImpl::initial_state(int64_t batch) const {
  const std::string why = step_unsupported();
  TORCH_CHECK(why.empty(), "the model has no incremental form: ", why);
  LmState state;
  const auto options = tok_emb_->weight.options();
  for (const auto& block : *blocks_) {
    state.layers.push_back(block->as<BlockImpl>()->mixer()->initial_state(batch, options));
  }
  return state;
}

torch::Tensor LanguageModelImpl::step(const torch::Tensor& tokens, LmState& state) {
  TORCH_CHECK(tokens.dim() == 1, "step: tokens must be [B], got ", tokens.sizes());
  TORCH_CHECK(state.layers.size() == blocks_->size(), "step: the state has ", state.layers.size(),
              " layers, the model ", blocks_->size(), " (start from initial_state)");
  const int64_t pos = state.position;
  TORCH_CHECK(!pos_emb_ || pos < cfg_.max_positions, "position ", pos,
              " is beyond the position table (model.max_positions = ", cfg_.max_positions, ")");
  auto x = tok_emb_->forward(tokens.unsqueeze(1));  // [B, 1, D]
  if (pos_emb_) x = x + pos_emb_->weight[pos];
  for (size_t l = 0; l < blocks_->size(); ++l) x = (*blocks_)[l]->as<BlockImpl>()->step(x, *state.layers[l]);
  x = final_norm_->forward(x).squeeze(1);  // [B, D]
  state.position += 1;
  return head_ ? head_->forward(x) : torch::linear(x, tok_emb_->weight);
}

void copy_parameters(LanguageModelImpl& from, LanguageModelImpl& to) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters();
  for (const auto& [name, dst] : to.named_parameters().pairs()) {
    TORCH_CHECK(src.contains(name), "cannot carry the model over: '", name, "' is new in the target model");
    const auto& s = src[name];
    if (name == "pos_emb.weight" && s.size(0) < dst.size(0) && s.size(1) == dst.size(1)) {
      const int64_t n = s.size(0);
      for (int64_t start = 0; start < dst.size(0); start += n) {
        const int64_t rows = std::min(n, dst.size(0) - start);
        dst.narrow(0, start, rows).copy_(s.narrow(0, 0, rows));
      }
      continue;
    }
    TORCH_CHECK(s.sizes() == dst.sizes(), "cannot carry the model over: '", name, "' is ", s.sizes(),
                " in the source and ", dst.sizes(), " in the target");
    dst.copy_(s);
  }
  TORCH_CHECK(src.size() == to.named_parameters().size(), "cannot carry the model over: the source has ",
              src.size(), " parameters, the target ", to.named_parameters().size());
  auto src_buffers = from.named_buffers();
  for (const auto& [name, dst] : to.named_buffers().pairs()) {
    TORCH_CHECK(src_buffers.contains(name) && src_buffers[name].sizes() == dst.sizes(),
                "cannot carry the model over: buffer '", name, "' differs");
    dst.copy_(src_buffers[name]);
  }
}

}  // namespace longtrain
