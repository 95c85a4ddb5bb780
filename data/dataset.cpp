// See dataset.h.
#include "data/dataset.h"

#include <filesystem>
#include <stdexcept>

#include "data/shards.h"
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
  SyntheticSpec spec{sc.facts, sc.recalls, sc.filler, sc.min_filler};
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

// Appends every shard of a split, validating each, to one stream.
void load_split(const std::string& dir, const ShardMeta& meta, const ShardSplitInfo& split, const char* name,
                TokenStream& s) {
  const std::string meta_path = (std::filesystem::path(dir) / kShardMetaFile).string();
  if (split.shards.empty()) {
    throw std::runtime_error(meta_path + ": no " + std::string(name) + " shards listed");
  }
  s.tokens.reserve(static_cast<size_t>(split.tokens));
  s.doc_starts.reserve(static_cast<size_t>(split.documents));
  for (const auto& file : split.shards) {
    const ShardReader shard((std::filesystem::path(dir) / file).string());
    if (shard.vocab_size() != meta.vocab_size) {
      throw std::runtime_error(shard.path() + ": vocab_size " + std::to_string(shard.vocab_size()) + ", but " +
                               meta_path + " says " + std::to_string(meta.vocab_size));
    }
    const auto offset = static_cast<int64_t>(s.tokens.size());
    shard.append_tokens(s.tokens);
    for (int64_t d = 0; d < shard.num_docs(); ++d) s.doc_starts.push_back(offset + shard.doc_starts()[d]);
  }
  if (s.num_docs() != split.documents || static_cast<int64_t>(s.tokens.size()) != split.tokens) {
    throw std::runtime_error(meta_path + ": lists " + std::to_string(split.documents) + " " + name +
                             " documents and " + std::to_string(split.tokens) + " tokens, the shards hold " +
                             std::to_string(s.num_docs()) + " and " + std::to_string(s.tokens.size()));
  }
}

void build_shards(const DataConfig& cfg, const Tokenizer& tok, Corpus& c) {
  if (cfg.paths.size() != 1) {
    throw std::invalid_argument(
        "data.source 'shards' needs data.paths to name one directory written by `longtrain prepare`");
  }
  const std::string& dir = cfg.paths[0];
  const ShardMeta meta = read_shard_meta(dir);
  const std::string mismatch = shard_tokenizer_mismatch(meta, dir, tok.name());
  if (!mismatch.empty()) throw std::runtime_error(mismatch);
  if (tok.vocab_size() != meta.vocab_size || tok.eos() != meta.eos) {
    throw std::runtime_error(dir + "/" + kShardMetaFile + ": vocab_size " + std::to_string(meta.vocab_size) +
                             " and <eos> " + std::to_string(meta.eos) + ", but the tokenizer has " +
                             std::to_string(tok.vocab_size()) + " and " + std::to_string(tok.eos()));
  }
  load_split(dir, meta, meta.train, "train", c.train);
  load_split(dir, meta, meta.val, "val", c.val);
  c.description = "token shards " + dir + " (" + meta.made_with + "): " +
                  std::to_string(meta.train.shards.size()) + " train / " +
                  std::to_string(meta.val.shards.size()) + " validation shards, " +
                  std::to_string(meta.train.documents) + " / " + std::to_string(meta.val.documents) +
                  " documents";
}

}  // namespace

Corpus build_corpus(const DataConfig& cfg, const Tokenizer& tok) {
  Corpus c;
  if (cfg.source == "synthetic") build_synthetic(cfg, tok, c);
  else if (cfg.source == "text") build_text(cfg, tok, c);
  else if (cfg.source == "shards") build_shards(cfg, tok, c);
  else throw std::invalid_argument("unknown data.source '" + cfg.source + "' (valid: synthetic, text, shards)");
  c.description += ", " + std::to_string(c.train.tokens.size()) + " train tokens";
  return c;
}

}  // namespace longtrain
