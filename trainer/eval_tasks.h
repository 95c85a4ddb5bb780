// `longtrain eval --tasks ...`: the long-context evaluation suite and its JSON
// report.
//
//   lm       Longformer-protocol loss / perplexity / bits per byte and the loss
//            by position, per window length (trainer/lm_protocol.h)
//   passkey  accuracy on a (length, depth) grid (data/recall_tasks.h)
//   mqar     accuracy on a (length, pairs) grid (data/recall_tasks.h)
//
// A recall answer counts as correct when every one of its tokens is the
// model's argmax given the true text before it (teacher forcing, one forward
// per item; MQAR scores all of an item's questions in that forward). A length
// the model cannot take (beyond a learned position table) is recorded in the
// report as skipped with the reason, and the other lengths still run.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/recall_tasks.h"
#include "data/tokenizer.h"
#include "model/lm.h"

namespace longtrain {

// The valid task names, in report order.
const std::vector<std::string>& eval_task_names();

struct EvalTaskOptions {
  std::vector<std::string> tasks;  // subset of eval_task_names()
  std::vector<int64_t> lengths;    // window / item lengths
  int64_t stride = 0;              // lm: 0 = length / 2
  int64_t max_windows = 32;        // lm: windows per length
  int64_t buckets = 16;            // lm: loss-by-position buckets
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75, 1.0};  // passkey
  std::vector<int64_t> pairs = {1, 4, 16};                   // mqar
  int64_t samples = 20;            // passkey / mqar items per grid cell
  uint64_t seed = 0;               // task items
  int64_t batch_size = 8;
  torch::Device device = torch::kCPU;
  bool bf16 = false;
};

struct RecallScore {
  int64_t items = 0;
  int64_t answers = 0;
  int64_t correct = 0;
  double accuracy() const { return answers ? static_cast<double>(correct) / answers : 0.0; }
};

// Scores every answer of every item (see the top of this file).
RecallScore score_recall(LanguageModel& model, const Tokenizer& tok, const std::vector<TaskItem>& items,
                         int64_t batch_size, const torch::Device& device, bool bf16);

// Runs the tasks, printing one human-readable line per result to `log`;
// returns {"lm": [...], "passkey": {...}, "mqar": {...}} for the tasks asked.
nlohmann::json run_eval_tasks(LanguageModel& model, const TokenStream& val, const Tokenizer& tok,
                              const EvalTaskOptions& opt, std::ostream& log);

}  // namespace longtrain
