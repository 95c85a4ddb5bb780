// The built-in synthetic long-document corpus: generated from a seed, no download.
//
// Each document opens with a table of random facts (`facts: kqz374 mwa019 ...`),
// then alternates filler sentences drawn from a small grammar (local structure a
// model learns quickly) with questions that restate a fact (`ask kqz374.`). The
// three digits of each restated value are unpredictable from anything nearby:
// only a model that looks back to the table, hundreds of tokens earlier, can get
// them right. Those digits are marked as the corpus' *long-range* targets;
// chance accuracy on them is 1/10 (3.32 bits per digit).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace longtrain {

struct SyntheticDoc {
  std::string text;
  // Byte offsets in `text` of the long-range targets (value digits of questions).
  std::vector<int64_t> long_range;
};

struct SyntheticSpec {
  int64_t facts = 6;
  int64_t recalls = 12;
  int64_t filler = 6;  // at most this many filler sentences between questions (0: none)
  // At least this many (when filler > 0), drawn uniformly in [min_filler, filler].
  // 0 puts some questions right after each other: denser recall, which a small
  // model learns in far fewer steps (recipes/compare/).
  int64_t min_filler = 1;
};

// Document `index` of the corpus with seed `seed`: the same on every machine.
SyntheticDoc synthetic_document(const SyntheticSpec& spec, uint64_t seed, int64_t index);

class Rng;
// The corpus' vocabulary, for tasks written in it (data/recall_tasks.h):
// one filler sentence ("the old fox runs to the lamp. "), a fact key (three
// lowercase letters) and a value (three digits).
std::string synthetic_filler_sentence(Rng& rng);
std::string synthetic_key(Rng& rng);
std::string synthetic_value(Rng& rng);

}  // namespace longtrain
