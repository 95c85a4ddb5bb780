// Checkpoints: one directory per saved step under RUN_DIR/checkpoints/.
//
//   step-00000100/
//     model.pt       module parameters and buffers (torch::save)
//     optimizer.pt   AdamW state
//     rng.pt         default generators' states (CPU, CUDA)
//     state.json     step, tokens seen, skipped steps, sampler position, elapsed time
//     recipe.yaml    the resolved recipe
//     manifest.json  format, version, step, and every file's size and checksum
//
// Written into a temporary sibling, each file fsynced, the manifest last, then
// renamed into place and the parent fsynced: a crash at any moment leaves either
// the previous checkpoints or a complete new one. A directory without a valid
// manifest, or whose files differ from it, is refused.
#pragma once

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace longtrain {

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TrainState {
  int64_t step = 0;           // optimizer steps completed
  int64_t tokens = 0;         // training tokens consumed
  int64_t skipped_steps = 0;  // steps dropped for non-finite loss/gradients
  double elapsed_s = 0;       // training wall time so far
  uint64_t sampler_seed = 0;  // sampler position is (seed, step)
  int64_t phase = 0;          // curriculum phase whose model the checkpoint holds
};

// Saves and returns the checkpoint's path; prunes all but the newest keep_last.
std::string save_checkpoint(const std::string& run_dir, const YAML::Node& resolved_recipe,
                            torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                            const TrainState& state, int64_t keep_last);

// Throws CheckpointError saying what is wrong (missing manifest, size or checksum mismatch).
void verify_checkpoint(const std::string& dir);

// Complete-looking checkpoint directories of a run, newest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);

// The newest checkpoint that verifies; `warn` hears about each one skipped.
// Empty when there is none.
std::string find_latest_checkpoint(const std::string& run_dir,
                                   const std::function<void(const std::string&)>& warn);

// The resolved recipe stored in a checkpoint (after verifying it).
YAML::Node checkpoint_recipe(const std::string& dir);

// Removes a directory tree (or file) if present. std::filesystem::remove_all
// is not used: libtorch.so exports its own copy of std::filesystem, which the
// dynamic linker binds first, and its remove_all crashes.
void remove_tree(const std::string& path);

// The checkpoint's state.json (verifying the checkpoint first).
TrainState read_train_state(const std::string& dir);

// Loads into already-built objects; optimizer may be null (evaluation).
TrainState load_checkpoint(const std::string& dir, torch::nn::Module& model,
                           torch::optim::Optimizer* optimizer, const torch::Device& device);

}  // namespace longtrain
