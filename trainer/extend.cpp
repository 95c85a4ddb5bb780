// See extend.h.
#include "trainer/extend.h"

#include <stdexcept>

#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/device.h"

namespace longtrain {

void init_from_checkpoint(const std::string& ckpt, LanguageModelImpl& model, const torch::Device& device) {
  const Recipe stored = parse_recipe(checkpoint_recipe(ckpt), ckpt + "/recipe.yaml");
  // Neither building the source model nor loading (which restores the
  // checkpoint's generators) may move this run's RNG.
  const auto rng = rng_states();
  LanguageModel source(stored.model);
  load_checkpoint(ckpt, *source, nullptr, torch::kCPU);
  set_rng_states(rng);
  try {
    copy_parameters(*source, model);
  } catch (const c10::Error& e) {
    throw std::runtime_error(ckpt + ": cannot initialise this model from it: " + e.what_without_backtrace());
  }
  model.to(device);
}

std::string extend_checkpoint(const std::string& ckpt, int64_t positions, const std::string& out_run_dir) {
  YAML::Node root = checkpoint_recipe(ckpt);
  const Recipe stored = parse_recipe(YAML::Clone(root), ckpt + "/recipe.yaml");
  const ModelConfig& m = stored.model;
  if (positions <= m.max_positions) {
    throw std::invalid_argument("--positions " + std::to_string(positions) + " is not longer than the model's " +
                                std::to_string(m.max_positions));
  }
  if (m.positions == "rope") {
    root["model"]["rope_scale"] = m.rope_scale * static_cast<double>(positions) / static_cast<double>(m.max_positions);
  }
  root["model"]["max_positions"] = positions;
  root["run"]["dir"] = out_run_dir;
  const Recipe target = parse_recipe(root, ckpt + "/recipe.yaml (extended)");
  LanguageModel source(stored.model), extended(target.model);
  const TrainState state = load_checkpoint(ckpt, *source, nullptr, torch::kCPU);
  copy_parameters(*source, *extended);
  torch::optim::AdamW fresh(extended->parameters());  // no state: a new run starts its own
  TrainState out = state;
  out.phase = 0;
  return save_checkpoint(out_run_dir, target.resolved, *extended, fresh, out, 1);
}

}  // namespace longtrain
