// See sparse_mixer.h.
#include "model/sparse_mixer.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <stdexcept>

#include "model/linear.h"
#include "model/sparse_attention_fast.h"

namespace longtrain {

SparseAttentionMixerImpl::SparseAttentionMixerImpl(const MixerDims& dims, int64_t block,
                                                   std::vector<HeadPattern> heads, GlobalSpec global,
                                                   SparseImpl impl)
    : dims_(dims), block_(block), heads_(std::move(heads)), global_(global), impl_(impl) {
  TORCH_CHECK(dims.d_model % dims.n_heads == 0, "d_model ", dims.d_model, " is not divisible by n_heads ",
              dims.n_heads);
  TORCH_CHECK(static_cast<int64_t>(heads_.size()) == dims.n_heads, heads_.size(), " head patterns for ",
              dims.n_heads, " heads");
  qkv_ = register_module("qkv", torch::nn::Linear(dims.d_model, 3 * dims.d_model));
  out_ = register_module("out", torch::nn::Linear(dims.d_model, dims.d_model));
  if (global_.enabled()) {
    global_qkv_ = register_module("global_qkv", torch::nn::Linear(dims.d_model, 3 * dims.d_model));
  }
}

const BlockLayout& SparseAttentionMixerImpl::layout_of_head(int64_t head, int64_t seq_len) {
  const auto key = std::make_pair(heads_[head].key, seq_len);
  auto it = layouts_.find(key);
  if (it == layouts_.end()) {
    it = layouts_.emplace(key, build_layout(heads_[head].make(seq_len), seq_len, block_)).first;
  }
  return it->second;
}

std::vector<const LayoutTensors*> SparseAttentionMixerImpl::layouts(int64_t seq_len, const torch::Device& device) {
  std::vector<const LayoutTensors*> out;
  for (int64_t h = 0; h < dims_.n_heads; ++h) {
    const auto key = std::make_tuple(heads_[h].key, seq_len, device.str());
    auto it = tensors_.find(key);
    if (it == tensors_.end()) it = tensors_.emplace(key, layout_tensors(layout_of_head(h, seq_len), device)).first;
    out.push_back(&it->second);
  }
  return out;
}

const kernels::SparseAttentionPlan& SparseAttentionMixerImpl::kernel_plan(int64_t seq_len, const torch::Device& device,
                                                                         PlanPart part) {
  const auto key = std::make_tuple(seq_len, device.str(), part);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const int64_t first = std::min(global_.first, seq_len);
  if (part == PlanPart::kGlobalRows) {  // the same for every head
    const auto tiles = tile_layout(build_layout(global_rows_pattern(first, block_, seq_len, dims_.causal), seq_len, block_));
    return plans_.emplace(key, kernels::make_plan({&tiles}, std::vector<int64_t>(dims_.n_heads, 0), device)).first->second;
  }
  // Heads with one pattern share one tile layout.
  std::map<std::string, int64_t> index_of;
  std::vector<kernels::TileLayout> tiles;
  std::vector<int64_t> head_layout;
  for (int64_t h = 0; h < dims_.n_heads; ++h) {
    auto [pos, fresh] = index_of.emplace(heads_[h].key, static_cast<int64_t>(tiles.size()));
    if (fresh) {
      if (part == PlanPart::kWindowColumns) {
        const auto pattern = with_global_columns(heads_[h].make(seq_len), first, block_, dims_.causal);
        tiles.push_back(tile_layout(build_layout(without_rows(pattern, first), seq_len, block_)));
      } else {
        tiles.push_back(tile_layout(layout_of_head(h, seq_len)));
      }
    }
    head_layout.push_back(pos->second);
  }
  std::vector<const kernels::TileLayout*> ptrs;
  for (const auto& t : tiles) ptrs.push_back(&t);
  return plans_.emplace(key, kernels::make_plan(ptrs, head_layout, device)).first->second;
}

bool SparseAttentionMixerImpl::use_kernel(const torch::Tensor& q) const {
  if (impl_ == SparseImpl::kReference) return false;
  const std::string why = sparse_kernel_unsupported(q);
  TORCH_CHECK(why.empty() || impl_ == SparseImpl::kAuto, "impl: cuda cannot run: ", why);
  return why.empty();
}

SparseImpl parse_sparse_impl(Section& s) {
  std::string impl = "auto";
  s.get("impl", impl);
  if (impl == "auto") return SparseImpl::kAuto;
  if (impl == "cuda") return SparseImpl::kCuda;
  if (impl == "reference") return SparseImpl::kReference;
  s.fail("impl", "must be one of auto, cuda, reference; got '" + impl + "'");
}

torch::Tensor SparseAttentionMixerImpl::global_mask(const torch::Tensor& x, const MixerContext& ctx) const {
  const int64_t B = x.size(0), L = x.size(1);
  if (ctx.global_mask.defined()) {
    TORCH_CHECK(ctx.global_mask.sizes() == torch::IntArrayRef({B, L}), "global mask must be [", B, ", ", L,
                "], got ", ctx.global_mask.sizes());
    return ctx.global_mask.to(torch::kBool);
  }
  auto mask = torch::zeros({B, L}, torch::dtype(torch::kBool).device(x.device()));
  if (global_.first > 0) mask.narrow(1, 0, std::min(global_.first, L)).fill_(true);
  if (global_.token >= 0) {
    TORCH_CHECK(ctx.tokens.defined(), "global_token needs the token ids in the mixer context");
    mask = mask | (ctx.tokens == global_.token);
  }
  return mask;
}

torch::Tensor SparseAttentionMixerImpl::forward(const torch::Tensor& x, const MixerContext& ctx) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), H = dims_.n_heads;
  // [B, L, 3D] -> 3 x [B, H, L, Dh]
  auto split = [&](const torch::Tensor& fused) { return split_qkv(fused, H, dims_.rope); };
  auto [q, k, v] = split(linear(qkv_, x));
  const bool kernel = use_kernel(q);
  const std::vector<const LayoutTensors*> per_head = kernel ? std::vector<const LayoutTensors*>() : layouts(L, x.device());
  torch::Tensor y;
  const bool use_global = (global_.enabled() || ctx.global_mask.defined()) && global_qkv_;
  // "First k tokens" globals are the same for every batch: their columns go
  // into the kernel's layout, and their positions are known on the host (no
  // device read in the step). Masks from the data or from token ids are read
  // back once per forward for their largest count.
  const bool static_columns = use_global && !ctx.global_mask.defined() && global_.token < 0;
  torch::Tensor mask = use_global && !static_columns ? global_mask(x, ctx) : torch::Tensor();
  if (static_columns || (use_global && mask.any().item<bool>())) {
    auto [gq, gk, gv] = split(linear(global_qkv_, x));
    GlobalAttention g;
    g.q = gq;
    g.k = gk;
    g.v = gv;
    if (kernel && static_columns) {
      // The window (with the global columns) and the global rows: two kernel
      // launches on their own plans, added; no positions needed.
      y = sparse_attention_fast(q, k, v, kernel_plan(L, x.device(), PlanPart::kWindowColumns), dims_.causal, &g, true,
                                &kernel_plan(L, x.device(), PlanPart::kGlobalRows));
    } else {
      std::tie(g.index, g.valid) =
          static_columns ? first_global_positions(B, std::min(global_.first, L), x.device()) : global_positions(mask);
      // Per-batch globals go around the kernel.
      y = kernel ? sparse_attention_fast(q, k, v, kernel_plan(L, x.device(), PlanPart::kWindow), dims_.causal, &g, false)
                 : sparse_attention(q, k, v, per_head, dims_.causal, &g);
    }
  } else {
    y = kernel ? sparse_attention_fast(q, k, v, kernel_plan(L, x.device(), PlanPart::kWindow), dims_.causal, nullptr, false)
               : sparse_attention(q, k, v, per_head, dims_.causal);
  }
  // [B, H, L, Dh] -> [B, L, D]
  return linear(out_, y.transpose(1, 2).reshape({B, L, D}));
}

namespace {

struct RingBuffer : MixerState {
  torch::Tensor k, v;    // [B, H, W, Dh]; slot p % W holds position p
  torch::Tensor slot_pos;  // [W] int64 position held by each slot, -1: empty
};

}  // namespace

void SparseAttentionMixerImpl::set_step_windows(std::vector<int64_t> per_head_window) {
  TORCH_CHECK(static_cast<int64_t>(per_head_window.size()) == dims_.n_heads, per_head_window.size(),
              " step windows for ", dims_.n_heads, " heads");
  step_windows_ = std::move(per_head_window);
}

std::string SparseAttentionMixerImpl::step_unsupported() const {
  if (!dims_.causal) return "bidirectional attention has no incremental form";
  if (global_.enabled()) return "global tokens need every earlier position (no ring buffer)";
  if (step_windows_.empty()) return "only plain sliding windows (no dilation) have a ring-buffer form";
  return "";
}

std::unique_ptr<MixerState> SparseAttentionMixerImpl::initial_state(int64_t batch,
                                                                    const torch::TensorOptions& options) {
  TORCH_CHECK(step_unsupported().empty(), "sparse attention: ", step_unsupported());
  const int64_t H = dims_.n_heads, Dh = dims_.d_model / H;
  const int64_t W = *std::max_element(step_windows_.begin(), step_windows_.end());
  auto s = std::make_unique<RingBuffer>();
  s->k = torch::zeros({batch, H, W, Dh}, options);
  s->v = torch::zeros({batch, H, W, Dh}, options);
  s->slot_pos = torch::full({W}, -1, torch::dtype(torch::kInt64).device(options.device()));
  return s;
}

torch::Tensor SparseAttentionMixerImpl::step(const torch::Tensor& x, MixerState& base) {
  auto& s = dynamic_cast<RingBuffer&>(base);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "sliding attention step: x must be [B, 1, D], got ", x.sizes());
  const int64_t B = x.size(0), D = x.size(2), H = dims_.n_heads, W = s.k.size(2), t = s.position;
  // [B, 1, 3D] -> [3, B, H, 1, Dh]
  auto qkv = linear(qkv_, x).view({B, 1, 3, H, D / H}).permute({2, 0, 3, 1, 4});
  auto q = qkv[0], k = qkv[1];
  if (dims_.rope.enabled) {
    q = apply_rope(q, dims_.rope, t);
    k = apply_rope(k, dims_.rope, t);
  }
  const int64_t slot = t % W;
  s.k.narrow(2, slot, 1).copy_(k);
  s.v.narrow(2, slot, 1).copy_(qkv[2]);
  s.slot_pos[slot] = t;
  s.position += 1;
  // Head h sees positions t - window_h < p <= t, the causal sliding pattern.
  auto windows = torch::tensor(step_windows_, s.slot_pos.options()).view({H, 1});         // [H, 1]
  auto age = t - s.slot_pos.view({1, W});                                                 // [1, W]
  auto mask = ((s.slot_pos.view({1, W}) >= 0) & (age < windows)).view({1, H, 1, W});      // [1, H, 1, W]
  auto y = at::scaled_dot_product_attention(q, s.k, s.v, mask);                           // [B, H, 1, Dh]
  return linear(out_, y.transpose(1, 2).reshape({B, 1, D}));
}

PerLayerHead parse_per_layer_head(const std::string& key, const YAML::Node& value) {
  auto as_int = [&](const YAML::Node& n) {
    try {
      return n.as<int64_t>();
    } catch (const YAML::Exception&) {
      throw std::invalid_argument(key + ": expected an integer, a list of integers (one per layer), or a list of "
                                        "lists (per layer, per head)");
    }
  };
  PerLayerHead out;
  if (value.IsScalar()) return {{as_int(value)}};
  if (!value.IsSequence() || value.size() == 0) throw std::invalid_argument(key + ": expected an integer or a non-empty list");
  for (const auto& layer : value) {
    std::vector<int64_t> heads;
    if (layer.IsSequence()) {
      for (const auto& h : layer) heads.push_back(as_int(h));
    } else {
      heads.push_back(as_int(layer));
    }
    out.push_back(heads);
  }
  return out;
}

int64_t per_layer_head(const PerLayerHead& v, int64_t layer, int64_t head) {
  const auto& row = v.size() == 1 ? v[0] : v.at(static_cast<size_t>(layer));
  return row.size() == 1 ? row[0] : row.at(static_cast<size_t>(head));
}

void check_per_layer_head(const std::string& key, const PerLayerHead& v, const MixerCheck& c) {
  if (v.size() != 1 && static_cast<int64_t>(v.size()) != c.n_layers) {
    throw std::invalid_argument(key + ": the list has " + std::to_string(v.size()) + " entries but model.n_layers is " +
                                std::to_string(c.n_layers) + " (give one value, or one per layer)");
  }
  for (const auto& row : v) {
    if (row.size() != 1 && static_cast<int64_t>(row.size()) != c.n_heads) {
      throw std::invalid_argument(key + ": a per-head list has " + std::to_string(row.size()) +
                                  " entries but model.n_heads is " + std::to_string(c.n_heads));
    }
  }
}

}  // namespace longtrain
