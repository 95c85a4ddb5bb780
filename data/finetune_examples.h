// Fine-tuning examples from JSONL, encoded for the task heads
// (model/task_heads.h), one JSON object per line:
//
//   classification: {"text": "...", "label": 3}   or   "label": "positive"
//   extractive QA:  {"context": "...", "question": "...", "answer": "..."}
//                   or "answer": {"text": "...", "start": CHAR_OFFSET}
//
// Encodings (eos is the tokenizer's document separator, used as the special token):
//   classification: [eos] text        position 0 is the classification token
//   QA:             [eos] question [eos] context
//                   the first question_len tokens (question and both
//                   separators) get global attention; the answer is a
//                   token span [start, end] (inclusive) inside the context
// The context is encoded in three pieces (before, answer, after) so the answer
// is a whole number of tokens whatever the tokenizer (exact for bytes).
// Too-long inputs are cut to max_len; a QA example whose answer would be cut
// is dropped and counted. String labels are numbered in sorted order, so the
// numbering does not depend on the line order.
// Errors name the file and line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace longtrain {

struct ClassificationExample {
  std::vector<int32_t> tokens;
  int64_t label = 0;
};

struct ClassificationSet {
  std::vector<ClassificationExample> examples;
  std::vector<std::string> label_names;  // empty for integer labels
  int64_t num_classes = 0;
};

ClassificationSet read_classification_jsonl(const std::string& path, const Tokenizer& tok, int64_t max_len);

struct QaExample {
  std::vector<int32_t> tokens;
  int64_t question_len = 0;  // leading tokens with global attention
  int64_t start = 0, end = 0;  // answer tokens, inclusive
};

struct QaSet {
  std::vector<QaExample> examples;
  int64_t dropped = 0;  // answers beyond max_len
};

QaSet read_qa_jsonl(const std::string& path, const Tokenizer& tok, int64_t max_len);

}  // namespace longtrain
