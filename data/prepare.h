// `longtrain prepare`: text files, directories (recursively) and JSONL files
// into token shards (data/shards.h) plus meta.json and, for SentencePiece,
// tokenizer.model.
//
// Documents are split into train and validation as data/documents.h says,
// tokenized on `threads` threads in batches (long documents in line-aligned
// pieces when the tokenizer allows it), and written in input order, so the
// output does not depend on the thread count. A shard is closed before the
// document that would take it past `shard_tokens` (a longer document gets a
// shard of its own). meta.json is removed first and written last: a directory
// whose preparation was interrupted has none and is refused by the loader.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/shards.h"

namespace longtrain {

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  std::string tokenizer = "bytes";  // bytes | spm:MODEL | train-spm:VOCAB
  std::string spm_type = "bpe";     // train-spm: bpe | unigram
  double val_fraction = 0.05;
  int64_t shard_tokens = 100'000'000;
  int threads = 2;
  bool progress = true;  // a throughput line on stderr
};

struct PrepareResult {
  ShardMeta meta;
  double seconds = 0;
};

// Throws std::invalid_argument for bad options and std::runtime_error naming
// the file for missing, unreadable or malformed inputs and empty corpora.
PrepareResult prepare(const PrepareOptions& options);

}  // namespace longtrain
