// Token shards: the on-disk form of a prepared corpus (see `longtrain prepare`).
//
// One shard file, little-endian throughout:
//
//   offset  size  field
//        0     8  magic "LTSHARD\0"
//        8     4  format version (uint32, kShardVersion)
//       12     4  token width in bytes (uint32): 2 when vocab_size <= 65536, else 4
//       16     8  vocab_size (uint64): every token id is < vocab_size
//       24     8  num_tokens (uint64)
//       32     8  num_docs (uint64)
//       40     8  checksum (uint64, trainer/checksum.h) of the payload, seeded with the
//                 checksum of bytes 0..40, so a changed header field is caught too
//       48    16  reserved, zero
//       64        tokens: num_tokens unsigned ints of the token width
//                 zero padding to a multiple of 8 bytes
//                 doc_starts: num_docs int64, the token index where each document
//                 starts (0 first, strictly increasing)
//
// Documents are stored as the training stream holds them: a document's tokens
// then the tokenizer's <eos>. A document never spans two shards.
//
// A directory of shards holds train-NNNNN.bin, val-NNNNN.bin, meta.json (the
// tokenizer, vocabulary and counts; what the loader trusts for the shard list)
// and, for SentencePiece, tokenizer.model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace longtrain {

struct ShardError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr uint32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 64;
constexpr const char* kShardMetaFile = "meta.json";
constexpr const char* kShardTokenizerFile = "tokenizer.model";

// 2 (uint16) when every id of a vocabulary of this size fits, else 4.
int token_width_for(int64_t vocab_size);

// Accumulates documents in memory, then writes one shard crash-safely: to a
// temporary sibling, fsynced, renamed into place.
class ShardWriter {
 public:
  ShardWriter(std::string path, int64_t vocab_size);
  // Appends one document (its tokens, <eos> included). Throws on an id outside
  // [0, vocab_size).
  void add_document(const std::vector<int32_t>& ids);
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_docs() const { return static_cast<int64_t>(doc_starts_.size()); }
  void finish();

 private:
  std::string path_;
  int64_t vocab_size_;
  int width_;
  int64_t num_tokens_ = 0;
  std::vector<unsigned char> tokens_;
  std::vector<int64_t> doc_starts_;
};

// A shard mapped read-only and fully validated on open: magic, version, width,
// size against the header, checksum, every token id < vocab_size and the
// document index. Any failure throws ShardError naming the file and the fault.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(ShardReader&& other) noexcept;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  ShardReader& operator=(ShardReader&&) = delete;

  const std::string& path() const { return path_; }
  int token_width() const { return width_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_docs() const { return num_docs_; }
  uint64_t checksum() const { return checksum_; }
  int32_t token(int64_t i) const;
  // Appends every token, widened to int32.
  void append_tokens(std::vector<int32_t>& out) const;
  const int64_t* doc_starts() const { return doc_starts_; }

 private:
  [[noreturn]] void fail(const std::string& why) const;
  void validate();

  std::string path_;
  const unsigned char* map_ = nullptr;
  size_t size_ = 0;
  int width_ = 0;
  int64_t vocab_size_ = 0, num_tokens_ = 0, num_docs_ = 0;
  uint64_t checksum_ = 0;
  const unsigned char* tokens_ = nullptr;
  const int64_t* doc_starts_ = nullptr;
};

// meta.json of a shard directory.
struct ShardSplitInfo {
  std::vector<std::string> shards;  // file names inside the directory, in order
  int64_t tokens = 0, documents = 0, text_bytes = 0;
};

struct ShardMeta {
  std::string tokenizer;            // "bytes" or "spm"
  std::string made_with;            // the --tokenizer given to prepare (bytes, spm:PATH, train-spm:N)
  std::string spm_type;             // bpe | unigram when prepare trained the model
  uint64_t tokenizer_checksum = 0;  // of tokenizer.model (spm)
  int64_t vocab_size = 0;
  int64_t eos = 0;
  int token_width = 0;
  double val_fraction = 0;
  int64_t input_files = 0;
  ShardSplitInfo train, val;
};

void write_shard_meta(const std::string& dir, const ShardMeta& meta);
// Throws std::runtime_error naming DIR/meta.json when it is missing or malformed.
ShardMeta read_shard_meta(const std::string& dir);
// The tokenizer spec (for make_tokenizer) the shards in `dir` were made with:
// "bytes", or "spm:DIR/tokenizer.model".
std::string shard_tokenizer_spec(const ShardMeta& meta, const std::string& dir);
// "" when `spec` is the tokenizer the shards in `dir` were made with (for
// SentencePiece: a model file with the same checksum), else the reason, naming
// the meta file.
std::string shard_tokenizer_mismatch(const ShardMeta& meta, const std::string& dir, const std::string& spec);

// Writes `bytes` to `path` through a temporary sibling, fsync and rename.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace longtrain
