// Model configuration: the LM's shape and the mixer (attention family) of its blocks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace longtrain {

// What a mixer's options are checked against once the whole recipe is known.
struct MixerCheck {
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t seq_len = 0;  // the training sequence length
};

// A mixer's own options, parsed by the factory registered under its name.
struct MixerOptions {
  virtual ~MixerOptions() = default;
  // Throws std::invalid_argument when the options cannot work with the model
  // or sequence length (a window not shorter than the sequence, a per-layer
  // list of the wrong length, ...).
  virtual void check(const MixerCheck&) const {}
};

struct MixerSpec {
  std::string type = "full";
  std::shared_ptr<const MixerOptions> options;
  std::string origin;  // "file:line: model.mixer", for messages
};

struct ModelConfig {
  int64_t vocab_size = 0;  // 0: taken from the tokenizer
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  double mlp_ratio = 4.0;
  int64_t max_positions = 1024;  // size of the learned position table
  std::string positions = "learned";  // learned (a table of max_positions) | rope | none
  double rope_base = 10000.0;
  double rope_scale = 1.0;            // > 1: position interpolation
  std::string norm = "layernorm";     // layernorm | rmsnorm
  // fp32 | bf16. Under bf16 autocast, bf16 keeps the residual stream, the norms'
  // inputs and outputs and the MLP in bf16 (as torchtitan's bf16 parameters and
  // llm.c do); fp32 keeps the stream in fp32 and lets autocast cast at every
  // matmul. Without autocast both are the same.
  std::string residual = "fp32";
  bool tie_embeddings = true;
  double dropout = 0.0;
  double init_std = 0.02;
  bool causal = true;  // false: bidirectional encoder (classification/QA)
  MixerSpec mixer;     // every layer's mixer, unless a pattern says otherwise
  // Hybrid stacks: one spec per layer (empty: all layers use `mixer`).
  std::vector<MixerSpec> layer_mixers;
  const MixerSpec& mixer_for(int64_t layer) const {
    return layer_mixers.empty() ? mixer : layer_mixers.at(static_cast<size_t>(layer));
  }
};

}  // namespace longtrain
