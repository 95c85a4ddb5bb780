// Moving a trained model to longer sequences, outside a curriculum:
//
//   longtrain extend CKPT --positions N [--out RUN_DIR]
//     learned positions: the table grows to N rows by copying the learned
//     rows (model/lm.h copy_parameters, Longformer's initialisation);
//     rope: position interpolation, rope_scale *= N / max_positions;
//     writes a checkpoint whose recipe has max_positions = N, ready for
//     `eval --seq-len N` or `train RECIPE --init CKPT`.
//   longtrain train RECIPE --init CKPT
//     starts a fresh run (step 0, new optimizer) from CKPT's weights, carried
//     into the recipe's model (its position table may be longer).
#pragma once

#include <string>

#include "model/lm.h"

namespace longtrain {

// Loads CKPT's weights into `model` (built from another recipe of the same
// architecture); a longer learned position table is filled by copying.
void init_from_checkpoint(const std::string& ckpt, LanguageModelImpl& model, const torch::Device& device);

// Writes the extended checkpoint under out_run_dir and returns its path.
std::string extend_checkpoint(const std::string& ckpt, int64_t positions, const std::string& out_run_dir);

}  // namespace longtrain
