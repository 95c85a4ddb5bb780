// The mixer interface and its registry.
//
// A block is `x + mixer(norm(x))` then `x + mlp(norm(x))`; the mixer is the only
// part that differs between attention families. Each family registers a name
// with two functions: `parse` reads (and strictly validates) its own recipe
// section, `build` makes the module for one layer. Registering a name twice, or
// asking for an unknown one, is an error that lists what exists.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/rope.h"

namespace longtrain {

class Section;

// What a mixer needs to know about the layer it is built for.
struct MixerDims {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t layer = 0;     // 0-based index of this block
  int64_t n_layers = 0;
  int64_t max_positions = 0;
  bool causal = true;
  double dropout = 0.0;
  double init_std = 0.02;
  RopeSpec rope;  // rotary positions, applied to q and k by attention mixers
};

// Per-call context: things that vary by batch rather than by layer.
struct MixerContext {
  torch::Tensor tokens;       // [B, L] int64 token ids (set by the LM)
  torch::Tensor global_mask;  // [B, L] bool, tokens with global attention; may be undefined
};

// What a mixer carries from one generated token to the next: a KV cache, a
// ring buffer, a recurrent state. Each mixer defines its own subclass.
struct MixerState {
  virtual ~MixerState() = default;
  int64_t position = 0;  // tokens consumed so far (the next token's position)
};

class MixerImpl : public torch::nn::Module {
 public:
  // x: [B, L, D] -> [B, L, D]
  virtual torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx) = 0;
  // Longest sequence this mixer accepts (e.g. a position-bias table); -1: any.
  virtual int64_t max_seq_len() const { return -1; }

  // Incremental (generation) interface, causal mixers only. A mixer that
  // supports it returns "" from step_unsupported(); otherwise the reason, and
  // model/generate.h recomputes the full forward instead.
  virtual std::string step_unsupported() const { return "no incremental form"; }
  // An empty state for a batch of `batch` sequences.
  virtual std::unique_ptr<MixerState> initial_state(int64_t batch, const torch::TensorOptions& options) {
    TORCH_CHECK(false, "this mixer has no incremental form: ", step_unsupported());
  }
  // x_t: [B, 1, D], the token at position state.position -> [B, 1, D], equal
  // to row state.position of forward() on the whole sequence so far; appends
  // the token to `state` and advances state.position.
  virtual torch::Tensor step(const torch::Tensor& x_t, MixerState& state) {
    TORCH_CHECK(false, "this mixer has no incremental form: ", step_unsupported());
  }
};
using Mixer = std::shared_ptr<MixerImpl>;

struct MixerEntry {
  std::function<std::shared_ptr<const MixerOptions>(Section&)> parse;
  std::function<Mixer(const MixerOptions&, const MixerDims&)> build;
};

class MixerRegistry {
 public:
  static MixerRegistry& instance();
  void add(const std::string& name, MixerEntry entry);  // throws on a duplicate name
  const MixerEntry& get(const std::string& name) const;  // throws listing known names
  std::vector<std::string> names() const;

 private:
  std::map<std::string, MixerEntry> entries_;
};

// Static registration: `static MixerRegistration reg("name", {parse, build});`
// in the mixer's own .cpp. The core library is a CMake OBJECT library so the
// linker keeps these objects.
struct MixerRegistration {
  MixerRegistration(const std::string& name, MixerEntry entry) {
    MixerRegistry::instance().add(name, std::move(entry));
  }
};

// Parses `section` (whose `type` key names the mixer) into a MixerSpec.
MixerSpec parse_mixer(Section& section);
Mixer build_mixer(const MixerSpec& spec, const MixerDims& dims);

}  // namespace longtrain
