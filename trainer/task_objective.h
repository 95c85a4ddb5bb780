// Fine-tuning objectives (recipe section `task`, trainer/config.h): a head
// from model/task_heads.h on the LM body, trained with its task's loss.
//
//   classification  [eos] text from JSONL (data/finetune_examples.h);
//                   cross-entropy over num_labels classes
//   listops         [eos] expression from the seeded generator (data/listops.h),
//                   up to train.seq_len - 1 characters; 10 classes
//   qa              [eos] question [eos] context from JSONL; start/end span
//                   loss over the context tokens; eval: exact match and
//                   token-overlap F1 of the best span (at most max_answer_len)
//
// Every batch is padded with eos to train.seq_len (one shape, so sparse
// layouts are built once); there is no padding mask, so a bidirectional body
// also sees the padding, consistently in training and eval. The pooled token
// is the last real one for a causal body (the only one that has seen the
// whole input) and the first (the [eos] classification token) for a
// bidirectional one. With global_attention: auto the pooled token (QA: the
// question and both separators) is global for mixers with global projections.
//
// Training examples: slot g = (step * grad_accum + micro) * world * B + rank * B
// + row of an endless stream; a file's examples go round in epochs, each a
// permutation seeded by (run.seed, epoch), so the batches depend on nothing
// but the step and resume needs no sampler state.
//
// The module that is optimized and checkpointed holds `body.*` (the LM) and
// `head.*`.
#pragma once

#include <memory>

#include "trainer/objective.h"

namespace longtrain {

std::unique_ptr<Objective> make_task_objective(const ObjectiveContext& ctx);

}  // namespace longtrain
