// SentencePiece behind the Tokenizer interface: loading a .model, and training
// one (BPE or unigram) from documents.
//
// Models trained here round-trip text exactly: identity normalisation, no
// dummy prefix, whitespace kept as is, and byte fallback (<0xNN> pieces) for
// any byte outside the vocabulary, so decode(encode(t)) == t and the bytes_of
// of t's ids sum to t's length (what bits-per-byte needs). </s> separates
// documents. Training is deterministic: a fixed thread count and a fixed seed
// for SentencePiece's sentence sampling.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace longtrain {

class SpmTokenizer : public Tokenizer {
 public:
  // Throws std::runtime_error naming `model_path` when it cannot be loaded or
  // has no </s> piece to separate documents.
  explicit SpmTokenizer(const std::string& model_path);
  ~SpmTokenizer() override;
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(bytes_.size()); }
  int32_t eos() const override { return eos_; }
  // UTF-8 bytes of the text the piece decodes to: "▁" (U+2581) stands for one
  // space, a byte piece <0xNN> for one byte; 0 for control and unknown pieces.
  int64_t bytes_of(int32_t id) const override;
  std::string name() const override { return "spm:" + path_; }
  bool encodes_lines_independently() const override { return lines_independent_; }

 private:
  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<int64_t> bytes_;
  int32_t eos_ = -1;
  bool lines_independent_ = false;
};

struct SpmTrainOptions {
  int64_t vocab_size = 8000;
  std::string model_type = "bpe";  // bpe | unigram
};

// Trains a model on the documents `next_document` yields (it returns false at
// the end) and returns the serialized model (the bytes of a .model file).
// Lines are the training sentences; longer ones are cut into pieces of at most
// kSpmMaxSentenceBytes. Throws std::runtime_error with SentencePiece's reason.
constexpr size_t kSpmMaxSentenceBytes = 4096;
std::string train_spm(const SpmTrainOptions& options, const std::function<bool(std::string&)>& next_document);

}  // namespace longtrain
