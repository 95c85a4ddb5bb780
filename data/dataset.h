// Token streams for training and validation, built from the recipe's data source.
//
// A stream is the documents' tokens concatenated with the tokenizer's <eos>
// between them, the start of each document, and (for the synthetic corpus) a
// mark on each long-range target token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace longtrain {

struct DataConfig;

struct TokenStream {
  std::vector<int32_t> tokens;
  std::vector<int64_t> doc_starts;     // token index where each document starts
  std::vector<uint8_t> long_range;     // empty, or 1 where tokens[i] is a long-range target
  int64_t num_docs() const { return static_cast<int64_t>(doc_starts.size()); }
  int64_t doc_end(int64_t d) const;    // one past the document's last token (before <eos>)
};

struct Corpus {
  TokenStream train, val;
  std::string description;  // one line for logs
};

Corpus build_corpus(const DataConfig& cfg, const Tokenizer& tok);

}  // namespace longtrain
