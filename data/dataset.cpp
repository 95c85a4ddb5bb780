// See dataset.h.
#include "data/dataset.h"

#include <stdexcept>

#include "data/synthetic.h"
#include "data/text_corpus.h"
#include "trainer/config.h"

namespace longtrain {

int64_t TokenStream::doc_end(int64_t d) const {
  const int64_t next = d + 1 < num_docs() ? doc_starts[d + 1] - 1 : static_cast<int64_t>(tokens.size()) - 1;
  return next;  // the <eos> that closes document d sits at `next`
}

namespace {

void append(TokenStream& s, const std::vector<int32_t>& ids, const std::vector<int64_t>& marks,
            int32_t eos, bool with_marks) {
  const int64_t start = static_cast<int64_t>(s.tokens.size());
  s.doc_starts.push_back(start);
  s.tokens.insert(s.tokens.end(), ids.begin(), ids.end());
  s.tokens.push_back(eos);
  if (with_marks) {
    s.long_range.resize(s.tokens.size(), 0);
    for (int64_t m : marks) s.long_range[start + m] = 1;
  }
}

void build_synthetic(const DataConfig& cfg, const Tokenizer& tok, Corpus& c) {
  const SyntheticConfig& sc = cfg.synthetic;
  SyntheticSpec spec{sc.facts, sc.recalls, sc.filler};
  // Byte offsets are token offsets only for the byte tokenizer; others get no marks.
  const bool marks = tok.name() == "bytes";
  // Validation documents come from a different stream of the same seed, so
  // they never repeat a training document.
  for (int64_t i = 0; i < sc.train_docs; ++i) {
    auto doc = synthetic_document(spec, static_cast<uint64_t>(sc.seed), i);
    append(c.train, tok.encode(doc.text), doc.long_range, tok.eos(), marks);
  }
  for (int64_t i = 0; i < sc.val_docs; ++i) {
    auto doc = synthetic_document(spec, static_cast<uint64_t>(sc.seed) ^ 0xA5A5A5A5ULL, i);
    append(c.val, tok.encode(doc.text), doc.long_range, tok.eos(), marks);
  }
  c.description = "synthetic long-document corpus (seed " + std::to_string(sc.seed) + "): " +
                  std::to_string(sc.train_docs) + " train / " + std::to_string(sc.val_docs) +
                  " validation documents, " + std::to_string(sc.facts) + " facts and " +
                  std::to_string(sc.recalls) + " recalls each";
}

void build_text(const DataConfig& cfg, const Tokenizer& tok, Corpus& c) {
  TextSplit split = read_text_corpus(cfg.paths, cfg.val_fraction);
  for (const auto& d : split.train) append(c.train, tok.encode(d), {}, tok.eos(), false);
  for (const auto& d : split.val) append(c.val, tok.encode(d), {}, tok.eos(), false);
  c.description = "text corpus: " + std::to_string(split.files.size()) + " files, " +
                  std::to_string(split.train.size()) + " train / " + std::to_string(split.val.size()) +
                  " validation documents";
}

}  // namespace

Corpus build_corpus(const DataConfig& cfg, const Tokenizer& tok) {
  Corpus c;
  if (cfg.source == "synthetic") build_synthetic(cfg, tok, c);
  else if (cfg.source == "text") build_text(cfg, tok, c);
  else throw std::invalid_argument("unknown data.source '" + cfg.source + "' (valid: synthetic, text)");
  c.description += ", " + std::to_string(c.train.tokens.size()) + " train tokens";
  return c;
}

}  // namespace longtrain
