// Activation checkpointing: run a piece of the model without keeping its
// activations, and recompute them in backward.
//
// LibTorch C++ has no torch.utils.checkpoint, so this is a
// torch::autograd::Function. Forward runs `fn(inputs)` with autograd off and
// keeps only the inputs; backward re-runs `fn` with autograd on and returns the
// gradients of its outputs w.r.t. the inputs and `params` (the parameters `fn`
// reads, passed in so that their gradients reach the optimizer through this
// node). The recompute sees what the first run saw: the default CPU generator
// and, for CUDA inputs, that device's generator are restored to their state at
// forward (so dropout masks repeat; the generators are put back afterwards),
// and autocast is re-entered with the forward's setting for the inputs'
// device. Gradients are those of the plain path, bit for bit on CPU in fp32
// (tested in tests/model/activation_checkpoint_test.cpp).
//
// Memory: the saved inputs instead of every intermediate of `fn`; the price is
// a second forward of `fn` in backward.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace longtrain {

using CheckpointFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

// Returns fn(inputs); gradients flow to `inputs` and `params`. Without grad
// mode (or when nothing requires grad) it is plain fn(inputs).
std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params);

// Which part of each block is recomputed (recipe train.activation_checkpointing).
enum class Checkpointing { kNone, kMixer, kFull };
// "none" | "mixer" | "full"; throws std::invalid_argument listing them otherwise.
Checkpointing parse_checkpointing(const std::string& name);

}  // namespace longtrain
