// What the training loop optimizes: the hook between trainer/loop.cpp (AdamW,
// schedule, accumulation, clipping, data parallelism, checkpoints, signals,
// logging) and the task (data, forward, loss, evaluation).
//
//   LmObjective (trainer/lm_objective.cpp)    next-token cross-entropy over
//       windows of the corpus; follows the curriculum's phases
//   TaskObjective (trainer/task_objective.h)  a head on the LM body with its
//       task's loss: classification / ListOps cross-entropy over labels,
//       extractive QA start/end span loss
//
// A micro-batch is a pure function of (step, micro, rank), so resuming from a
// checkpoint at step s reproduces the uninterrupted run's batches.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "model/lm.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"

namespace longtrain {

// A fine-tuning task's score on its eval split.
struct TaskScore {
  int64_t examples = 0;
  double loss = 0;      // mean task loss
  double accuracy = 0;  // classification / ListOps accuracy; QA exact match
  double f1 = 0;        // QA: mean token-overlap F1 of the predicted span (0 otherwise)
  double chance = 0;    // classification / ListOps: the majority class's share of the eval split
};

// One evaluation: `lm` for the language-model objective, `task` for a
// fine-tuning task; `record` is its metrics.jsonl entry (without step/phase)
// and `line` its human-readable summary.
struct Evaluation {
  EvalResult lm;
  TaskScore task;
  nlohmann::json record;
  std::string line;
};

struct MicroBatchLoss {
  torch::Tensor loss;  // mean over the micro-batch (tokens or examples): a scalar
  int64_t tokens = 0;  // tokens the forward consumed (for tokens/s)
};

class Objective {
 public:
  virtual ~Objective() = default;
  // The module that is optimized, broadcast between ranks and checkpointed:
  // the LM itself, or a head that holds the LM body.
  virtual torch::nn::Module& module() = 0;
  // The phase's recipe and LM body (phase 0 at start; a curriculum's next
  // phase rebuilds the body), and this process's place among the ranks.
  virtual void start_phase(const Recipe& phase, LanguageModel body, int64_t rank, int64_t world_size) = 0;
  // Micro-batch `micro` of optimizer step `step` (0-based) for this rank:
  // forward (bf16 autocast on CUDA when asked) and mean loss. Every
  // micro-batch of every rank weighs the same in the step's gradient.
  virtual MicroBatchLoss micro_batch(int64_t step, int64_t micro) = 0;
  virtual Evaluation evaluate() = 0;
  // What `longtrain train` prints at the end ("summary: ...").
  virtual std::string summary(const Evaluation& before, const Evaluation& after) const = 0;
  virtual std::string description() const = 0;  // the data, for the start-up log
};

struct ObjectiveContext {
  const Recipe* recipe = nullptr;        // the run's recipe; read while the objective is made
  const Tokenizer* tokenizer = nullptr;  // must outlive the objective
  torch::Device device = torch::kCPU;
  bool bf16 = false;
  uint64_t seed = 0;
};

// The objective the recipe asks for: its task section, or language modelling.
std::unique_ptr<Objective> make_objective(const ObjectiveContext& ctx);

}  // namespace longtrain
