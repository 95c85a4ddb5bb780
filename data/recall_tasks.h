// Seeded recall tasks for evaluation, written in the synthetic corpus'
// language (data/synthetic.h) so that a model trained on the bundled corpus
// can be scored on them without fine-tuning:
//
//   passkey (Mohtashami & Jaggi 2023): one fact `facts: kqz374` hidden at
//     depth d (the share of the filler before it, 0 = the start) in filler
//     sentences, and at the end the question `ask kqz` whose answer `374` is
//     scored. Tests retrieval over a chosen distance.
//   MQAR (multi-query associative recall, Arora et al. 2023 "Zoology"): a
//     table of n facts `facts: kqz374 mwa019 ...`, then each key asked once,
//     in a shuffled order, spread evenly through filler text. Tests recall of
//     many associations at once, where fixed-size recurrent states fail first.
//
// An item is a list of pieces; the answer pieces are what a scorer checks
// (every answer token must be the model's argmax given the true text before
// it). Lengths are in characters, which are tokens for the byte tokenizer;
// an item never exceeds its length and falls short of it by less than one
// filler sentence. Items depend only on (seed, index, parameters): the same
// on every machine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace longtrain {

struct TaskPiece {
  std::string text;
  bool answer = false;
};

struct TaskItem {
  std::vector<TaskPiece> pieces;
  std::string text() const;          // all pieces joined
  int64_t num_answers() const;
};

// depth in [0, 1]; length must leave room for the fact and the question (>= 32).
TaskItem passkey_item(int64_t length, double depth, uint64_t seed, int64_t index);

// pairs >= 1 distinct keys; length must hold the table and the questions.
TaskItem mqar_item(int64_t length, int64_t pairs, uint64_t seed, int64_t index);

}  // namespace longtrain
