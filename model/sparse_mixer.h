// The mixer shared by the sparse family (`sliding`, `bigbird`, `sparse`): q, k,
// v projections, per-head block layouts from a pattern, block-sparse attention
// (sparse_attention.h), optional Longformer global tokens with their own q, k, v
// projections, output projection. The families differ only in the per-head
// patterns they hand in; layouts are built once per (pattern, seq_len, device)
// and cached.
#pragma once

#include <yaml-cpp/yaml.h>

#include "trainer/recipe_section.h"

#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/sparse_attention/op.h"
#include "model/block_layout.h"
#include "model/mixer.h"
#include "model/sparse_attention.h"

namespace longtrain {

// One head's pattern: `key` names it (heads with equal keys share a layout),
// `make(seq_len)` builds it.
struct HeadPattern {
  std::string key;
  std::function<SparsePattern(int64_t seq_len)> make;
};

// Which tokens get global attention: the first `first` of each sequence, and
// any token whose id is `token` (-1: none). MixerContext::global_mask, when
// given, replaces both.
struct GlobalSpec {
  int64_t first = 0;
  int64_t token = -1;
  bool enabled() const { return first > 0 || token >= 0; }
};

// Which implementation runs: `auto` takes the CUDA kernel when it can (CUDA,
// bf16/fp16, head dim 64 or 128) and the reference otherwise; `cuda` insists
// (an error says why it cannot); `reference` always runs the reference.
enum class SparseImpl { kAuto, kCuda, kReference };
SparseImpl parse_sparse_impl(Section& s);

class SparseAttentionMixerImpl : public MixerImpl {
 public:
  SparseAttentionMixerImpl(const MixerDims& dims, int64_t block, std::vector<HeadPattern> heads, GlobalSpec global,
                           SparseImpl impl = SparseImpl::kAuto);
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx) override;
  // The layouts this mixer uses at length L (built if needed), per head.
  std::vector<const LayoutTensors*> layouts(int64_t seq_len, const torch::Device& device);
  const BlockLayout& layout_of_head(int64_t head, int64_t seq_len);
  // The kernel's plans at length L on `device` (each built once): the
  // window; the window with the static global columns (the first
  // `global_first` tokens) folded in and their rows left out; those rows alone.
  enum class PlanPart { kWindow, kWindowColumns, kGlobalRows };
  const kernels::SparseAttentionPlan& kernel_plan(int64_t seq_len, const torch::Device& device, PlanPart part);
  // Whether forward() takes the kernel for these q, k, v (throws for impl: cuda when it cannot).
  bool use_kernel(const torch::Tensor& q) const;

  // Generation, for plain causal sliding windows only (no dilation, no global
  // tokens): the `sliding` builder hands in each head's window, and the state
  // is a ring buffer of the last max(window) keys and values. Other patterns
  // (bigbird's random blocks, strided heads, global tokens) report why not.
  void set_step_windows(std::vector<int64_t> per_head_window);
  std::string step_unsupported() const override;
  std::unique_ptr<MixerState> initial_state(int64_t batch, const torch::TensorOptions& options) override;
  torch::Tensor step(const torch::Tensor& x_t, MixerState& state) override;

 private:
  std::vector<int64_t> step_windows_;  // per head; empty: no incremental form
  torch::Tensor global_mask(const torch::Tensor& x, const MixerContext& ctx) const;

  MixerDims dims_;
  int64_t block_;
  std::vector<HeadPattern> heads_;
  GlobalSpec global_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr}, global_qkv_{nullptr};
  std::map<std::pair<std::string, int64_t>, BlockLayout> layouts_;
  std::map<std::tuple<std::string, int64_t, std::string>, LayoutTensors> tensors_;
  SparseImpl impl_;
  std::map<std::tuple<int64_t, std::string, PlanPart>, kernels::SparseAttentionPlan> plans_;
};

// Reads an int, a list (one per layer), or a list of lists (per layer, per
// head) from a recipe value, for options like window and dilation.
using PerLayerHead = std::vector<std::vector<int64_t>>;
PerLayerHead parse_per_layer_head(const std::string& key, const YAML::Node& value);
// The value for (layer, head), checking list lengths against the model.
int64_t per_layer_head(const PerLayerHead& v, int64_t layer, int64_t head);
void check_per_layer_head(const std::string& key, const PerLayerHead& v, const MixerCheck& c);

}  // namespace longtrain
