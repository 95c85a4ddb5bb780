// See synthetic.h.
#include "data/synthetic.h"

#include "data/rng.h"

namespace longtrain {
namespace {

const char* const kAdjectives[] = {"quiet", "old", "small", "bright", "heavy", "green", "cold", "swift"};
const char* const kNouns[] = {"fox", "river", "bridge", "letter", "garden", "lamp", "horse", "tower",
                              "market", "ship"};
const char* const kVerbs[] = {"walks past", "looks at", "waits by", "runs to", "sleeps near",
                              "sings to"};

template <size_t N>
const char* pick(Rng& rng, const char* const (&words)[N]) {
  return words[rng.below(N)];
}

}  // namespace

std::string synthetic_filler_sentence(Rng& rng) {
  std::string s = "the ";
  s += pick(rng, kAdjectives);
  s += " ";
  s += pick(rng, kNouns);
  s += " ";
  s += pick(rng, kVerbs);
  s += " the ";
  s += pick(rng, kNouns);
  s += ". ";
  return s;
}

std::string synthetic_key(Rng& rng) {
  std::string key;
  for (int i = 0; i < 3; ++i) key.push_back(static_cast<char>('a' + rng.below(26)));
  return key;
}

std::string synthetic_value(Rng& rng) {
  std::string value;
  for (int i = 0; i < 3; ++i) value.push_back(static_cast<char>('0' + rng.below(10)));
  return value;
}

SyntheticDoc synthetic_document(const SyntheticSpec& spec, uint64_t seed, int64_t index) {
  Rng rng(mix_keys(seed, static_cast<uint64_t>(index), 0x5eed));
  std::vector<std::string> keys, values;
  while (static_cast<int64_t>(keys.size()) < spec.facts) {
    std::string key = synthetic_key(rng);
    bool seen = false;
    for (const auto& k : keys) seen = seen || k == key;
    if (seen) continue;  // keys are unique within a document
    std::string value = synthetic_value(rng);
    keys.push_back(key);
    values.push_back(value);
  }
  SyntheticDoc doc;
  doc.text = "facts:";
  for (size_t i = 0; i < keys.size(); ++i) doc.text += " " + keys[i] + values[i];
  doc.text += "\n";
  for (int64_t q = 0; q < spec.recalls; ++q) {
    const int64_t n_filler =
        spec.filler == 0 ? 0
                         : spec.min_filler +
                               static_cast<int64_t>(rng.below(static_cast<uint64_t>(spec.filler - spec.min_filler + 1)));
    for (int64_t f = 0; f < n_filler; ++f) doc.text += synthetic_filler_sentence(rng);
    const size_t which = rng.below(keys.size());
    doc.text += "ask " + keys[which];
    for (int i = 0; i < 3; ++i) doc.long_range.push_back(static_cast<int64_t>(doc.text.size()) + i);
    doc.text += values[which] + ". ";  // "ask kqz374. "
  }
  doc.text += "\n";
  return doc;
}

}  // namespace longtrain
