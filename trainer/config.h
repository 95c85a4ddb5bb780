// The recipe: typed configuration whose defaults live here, overridden by a
// YAML file, overridden in turn by `--set key.path=value`.
//
// load_recipe() validates everything at start-up (unknown keys, wrong types,
// impossible values: file:line, the key, the valid keys) and keeps the resolved
// recipe — every value the run will use — as YAML for printing and saving.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "trainer/curriculum.h"

namespace longtrain {

struct RunConfig {
  std::string dir = "runs/default";  // run directory: metrics, checkpoints, recipe
  int64_t seed = 1234;
};

struct SyntheticConfig {
  int64_t train_docs = 20000;
  int64_t val_docs = 200;
  int64_t facts = 6;          // key=value facts defined at the top of each document
  int64_t recalls = 12;       // later questions about those facts
  int64_t filler = 6;         // at most this many filler sentences between recalls (local structure)
  int64_t min_filler = 1;     // at least this many (0: some questions follow each other directly)
  int64_t seed = 7;
};

struct DataConfig {
  std::string source = "synthetic";  // synthetic | text | shards
  // text: files or directories (recursively); shards: the one directory
  // `longtrain prepare` wrote
  std::vector<std::string> paths;
  // bytes | spm:PATH (a SentencePiece .model); shards default to the one they were made with
  std::string tokenizer = "bytes";
  double val_fraction = 0.05;        // text: share of documents held out
  std::string window_start = "random";  // random | document | inside (see data/sampler.h)
  SyntheticConfig synthetic;
};

struct TrainConfig {
  int64_t steps = 300;
  int64_t batch_size = 16;   // sequences per micro-batch
  int64_t seq_len = 256;
  int64_t grad_accum = 1;    // micro-batches per optimizer step
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup = 30;
  std::string schedule = "cosine";  // cosine | constant
  double weight_decay = 0.1;
  bool decay_embeddings = false;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // 0 disables clipping (the norm is still logged)
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
  // stop | skip. With the fused AdamW and one process the check runs on the
  // device: such a step's update is skipped there and the run stops (or
  // counts it) at the next log step, checkpoint or evaluation.
  std::string on_nonfinite = "stop";
  int64_t log_every = 10;
  int64_t eval_every = 100;  // 0: only before and after training
  int64_t eval_docs = 64;    // validation documents (or windows) per evaluation
  int64_t threads = 0;       // CPU intra-op threads; 0: all cores
  // Speed and memory (model/activation_checkpoint.h, model/chunked_cross_entropy.h,
  // trainer/fused_adamw.h):
  // none | mixer (recompute each block's mixer in backward, keep the MLP's
  // activations) | full (recompute whole blocks: only block inputs are kept)
  std::string activation_checkpointing = "none";
  // Tokens per chunk of the fused output head + cross-entropy; 0: plain (the
  // whole [tokens, vocab] logits at once). 8192 keeps the chunk's logits at
  // 1 GiB in fp32 for a 32K vocabulary while its matmuls stay large.
  int64_t loss_chunk = 8192;
  std::string fused_adamw = "auto";  // auto (on CUDA) | true | false
  // Data parallel (trainer/distributed.h): a collective (or the rendezvous)
  // that takes longer fails the run on every rank instead of hanging it.
  double dist_timeout_s = 300;
};

struct CheckpointConfig {
  int64_t every = 100;  // steps; 0: only at the end and on signals
  int64_t keep_last = 3;
};

// Recipe section `task` (absent: language modelling). Fine-tuning trains a
// head on the LM body with the task's loss through the same loop
// (trainer/task_objective.h). Sequences are at most train.seq_len tokens.
struct ListOpsTaskConfig {
  int64_t max_depth = 10;
  int64_t max_args = 10;
  int64_t train_items = 0;  // 0: a new item at every draw; else cycle through this many
  int64_t eval_items = 500;
  int64_t seed = 11;        // train items are drawn from (seed, 0), eval items from (seed, 1)
};

struct TaskConfig {
  std::string kind = "lm";  // lm | classification | qa | listops
  std::string train, eval;  // classification, qa: JSONL files (data/finetune_examples.h)
  int64_t num_labels = 0;   // classification: 0 = from the data
  std::string init;         // a pretrained LM checkpoint whose weights start the body
  // auto: Longformer's task-driven global attention (the pooled token; the
  // question tokens) for mixers that have global projections; none: off.
  std::string global_attention = "auto";
  int64_t max_answer_len = 30;  // qa: longest span the decoder considers (tokens)
  int64_t eval_items = 0;       // classification, qa: cap on eval examples (0: all)
  ListOpsTaskConfig listops;
  bool finetune() const { return kind != "lm"; }
};

struct Recipe {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  CheckpointConfig checkpoint;
  CurriculumConfig curriculum;  // staged training (trainer/curriculum.h); empty: none
  TaskConfig task;
  YAML::Node resolved;  // every value in force, defaults filled in
  std::string file;     // where it came from
};

// Reads `file` (may be empty: all defaults), applies `overrides`, validates.
Recipe load_recipe(const std::string& file, const std::vector<std::string>& overrides = {});
// Validates an already-parsed tree (used for checkpoints and tests).
Recipe parse_recipe(YAML::Node root, const std::string& file);
std::string recipe_to_string(const Recipe& r);

}  // namespace longtrain
