// Staged training (Longformer's char-LM curriculum, Beltagy et al. 2020 sec. 4.2):
// a run is a list of phases, each with its own sequence length, attention
// window, learning rate, batch and step count. Typically each phase doubles
// the length and the window and halves the learning rate.
//
// Recipe section `curriculum` (absent: one phase, the recipe itself):
//   phases:               an explicit list; each entry sets
//     - seq_len: 2048     required
//       steps: 1000       required
//       lr: 2.5e-4        default: the previous phase's (train.lr for the first)
//       min_lr: ...       default: lr * train.min_lr / train.lr
//       warmup: 100       default: train.warmup
//       batch_size: 16    or tokens_per_step: 32768 (batch = tokens / seq_len);
//                         default: the previous phase's (train.batch_size)
//       window: 32        int, per layer or per layer and head; replaces the
//                         `window` of every sliding mixer (default: unchanged)
//       rope_scale: 2     position interpolation for model.positions: rope
//   doubling:             shorthand, expanded to `phases` (printed in the
//                         resolved recipe): `count` phases from the first
//                         one's settings, doubling seq_len and window and
//                         halving lr each phase (batch_size or tokens_per_step,
//                         steps and warmup stay)
//   rope_interpolation: false   rope models: phase i's rope_scale is
//                         model.rope_scale * seq_len_i / seq_len_0
//
// Each phase is a whole recipe (the base with the phase's values written in),
// validated at start-up like any recipe, so a window that does not fit a
// phase's length is an error naming the phase. train.steps becomes the sum of
// the phases' steps. At a phase boundary the trainer rebuilds the model for the
// new phase, carries every parameter over (a learned position table that must
// grow is extended by copying its learned rows: model/lm.h extend_positions),
// starts a fresh AdamW state and the phase's own warmup and decay.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace longtrain {

struct Recipe;
class Section;

struct PhaseSpec {
  int64_t seq_len = 0;
  int64_t steps = 0;
  int64_t batch_size = 0;
  int64_t warmup = 0;
  double lr = 0;
  double min_lr = 0;
  std::string window;     // YAML text of the window value; empty: keep the recipe's
  double rope_scale = 0;  // 0: keep the recipe's
  std::string origin;     // "file:line: curriculum.phases[i]"
};

struct CurriculumConfig {
  std::vector<PhaseSpec> phases;  // empty: no curriculum
};

// Parses the `curriculum` section (after train and model, whose values are the
// defaults) and writes the expanded phase list into the resolved recipe.
void parse_curriculum(Section& s, Recipe& r);

// A phase ready to run: its recipe, and where it sits in the run's steps.
struct Phase {
  int64_t index = 0;
  int64_t first_step = 0;  // global steps completed before it
  int64_t steps = 0;
  std::shared_ptr<Recipe> recipe;
  int64_t end_step() const { return first_step + steps; }
};

// The run's phases: the curriculum's, or the recipe itself as one phase.
// Throws RecipeError naming the phase when a phase's recipe is invalid.
std::vector<Phase> build_phases(const Recipe& r);

// The phase that owns the step after `completed` steps: a run resumed at a
// boundary continues in the next phase. Clamped to the last phase.
int64_t phase_at(const std::vector<Phase>& phases, int64_t completed);

}  // namespace longtrain
