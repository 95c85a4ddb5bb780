// See recall_tasks.h.
#include "data/recall_tasks.h"

#include <algorithm>
#include <stdexcept>

#include "data/rng.h"
#include "data/synthetic.h"

namespace longtrain {
namespace {

// Filler sentences adding up to at most `chars` characters.
std::string filler(Rng& rng, int64_t chars) {
  std::string out;
  for (;;) {
    std::string s = synthetic_filler_sentence(rng);
    if (static_cast<int64_t>(out.size() + s.size()) > chars) return out;
    out += s;
  }
}

// n distinct keys, each with a value.
void draw_facts(Rng& rng, int64_t n, std::vector<std::string>& keys, std::vector<std::string>& values) {
  while (static_cast<int64_t>(keys.size()) < n) {
    std::string key = synthetic_key(rng);
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
    keys.push_back(key);
    values.push_back(synthetic_value(rng));
  }
}

}  // namespace

std::string TaskItem::text() const {
  std::string out;
  for (const auto& p : pieces) out += p.text;
  return out;
}

int64_t TaskItem::num_answers() const {
  return std::count_if(pieces.begin(), pieces.end(), [](const TaskPiece& p) { return p.answer; });
}

TaskItem passkey_item(int64_t length, double depth, uint64_t seed, int64_t index) {
  if (depth < 0 || depth > 1) throw std::invalid_argument("passkey depth must lie in [0, 1], got " + std::to_string(depth));
  Rng rng(mix_keys(seed, static_cast<uint64_t>(index), 0x9a55e1));
  std::vector<std::string> keys, values;
  draw_facts(rng, 1, keys, values);
  const std::string needle = "facts: " + keys[0] + values[0] + "\n";  // 14 characters
  const std::string question = "ask " + keys[0];                      // then the value, then ". "
  const int64_t fixed = static_cast<int64_t>(needle.size() + question.size() + values[0].size() + 2);
  if (length < fixed + 18) {
    throw std::invalid_argument("passkey length " + std::to_string(length) + " is too short (at least " +
                                std::to_string(fixed + 18) + " characters)");
  }
  // The question follows the filler (". ") or the fact ("\n") directly, as
  // questions do in the corpus: an extra space there is a text the models never saw.
  const int64_t budget = length - fixed;
  const int64_t before = static_cast<int64_t>(depth * static_cast<double>(budget));
  std::string head = filler(rng, before);
  std::string tail = filler(rng, budget - static_cast<int64_t>(head.size()));
  TaskItem item;
  item.pieces.push_back({head + needle + tail + question, false});
  item.pieces.push_back({values[0], true});
  item.pieces.push_back({". ", false});
  return item;
}

TaskItem mqar_item(int64_t length, int64_t pairs, uint64_t seed, int64_t index) {
  if (pairs < 1) throw std::invalid_argument("mqar needs at least one pair, got " + std::to_string(pairs));
  Rng rng(mix_keys(seed, static_cast<uint64_t>(index), static_cast<uint64_t>(pairs), 0x3a9c));
  std::vector<std::string> keys, values;
  draw_facts(rng, pairs, keys, values);
  std::string table = "facts:";
  for (int64_t i = 0; i < pairs; ++i) table += " " + keys[i] + values[i];
  table += "\n";
  // Ask every key once, in a seeded shuffled order (Fisher-Yates).
  std::vector<int64_t> order(static_cast<size_t>(pairs));
  for (int64_t i = 0; i < pairs; ++i) order[i] = i;
  for (int64_t i = pairs - 1; i > 0; --i) std::swap(order[i], order[rng.below(static_cast<uint64_t>(i + 1))]);
  const int64_t per_question = 12;  // "ask kqz374. "
  const int64_t free = length - static_cast<int64_t>(table.size()) - per_question * pairs;
  if (free < 0) {
    throw std::invalid_argument("mqar length " + std::to_string(length) + " cannot hold " + std::to_string(pairs) +
                                " pairs (at least " + std::to_string(length - free) + " characters)");
  }
  // A gap of filler before each question, sharing what is left evenly, so a
  // gap's shortfall carries over and only the last one can fall short.
  TaskItem item;
  std::string text = table;
  int64_t left = free;
  for (int64_t q = 0; q < pairs; ++q) {
    const std::string gap = filler(rng, left / (pairs - q));
    left -= static_cast<int64_t>(gap.size());
    text += gap;
    text += "ask " + keys[order[q]];
    item.pieces.push_back({text, false});
    item.pieces.push_back({values[order[q]], true});
    text = ". ";
  }
  item.pieces.push_back({text, false});
  return item;
}

}  // namespace longtrain
