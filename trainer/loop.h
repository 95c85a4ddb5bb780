// The training loop: builds data, model and optimizer from a recipe, trains
// with AdamW (decoupled weight decay; none on norms, biases and embeddings
// unless asked), warmup + cosine/constant LR, gradient accumulation and
// clipping, bf16 autocast on CUDA, periodic evaluation and checkpoints, resume,
// and a clean stop on SIGINT/SIGTERM.
#pragma once

#include <stdexcept>
#include <string>

#include "model/lm.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/objective.h"
#include "trainer/step_health.h"  // NonFiniteError

namespace longtrain {


struct TrainOptions {
  std::string resume;  // "": fresh run; "auto": newest good checkpoint of the run; else a checkpoint dir
  bool print_recipe = true;
  // Stop after this many steps of this invocation, writing a checkpoint, as a
  // signal would (for time-sliced jobs); 0: run to train.steps.
  int64_t stop_after = 0;
  // A fresh run starts from this checkpoint's weights (trainer/extend.h).
  std::string init;
  // Kineto profile of profile_steps steps after profile_warmup steps of this
  // invocation, written to profile_dir (trainer/profile.h); "": off.
  std::string profile_dir;
  int64_t profile_steps = 3;
  int64_t profile_warmup = 5;
};

struct TrainResult {
  int64_t step = 0;
  bool interrupted = false;   // stopped early by a signal or stop_after (a checkpoint was written)
  bool has_before = false;    // evaluated before the first step (fresh runs)
  EvalResult before, after;   // language modelling
  TaskScore task_before, task_after;  // fine-tuning (recipe section `task`)
  std::string summary;        // before -> after, one line (fresh runs that finished)
  std::string run_dir, checkpoint;
  int64_t skipped_steps = 0;
  int64_t phase = 0;             // curriculum phase at the end
  LanguageModel model{nullptr};  // the trained model (for tests and callers that go on using it)
};

TrainResult train(Recipe recipe, const TrainOptions& options);

// The parameter-group rule: which parameters get weight decay.
bool decays(const std::string& name, const torch::Tensor& p, bool decay_embeddings);

}  // namespace longtrain
