// Tokenizers: text <-> token ids. Byte-level (256 bytes + specials) here;
// SentencePiece (data/spm_tokenizer.h) behind the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace longtrain {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eos() const = 0;  // document separator
  // How many bytes of text a token stands for (for bits per byte); 0 for specials.
  virtual int64_t bytes_of(int32_t id) const = 0;
  virtual std::string name() const = 0;  // the spec that recreates it
  // True when encode(a + "\n" + b) == encode(a + "\n") ++ encode(b) for all a, b:
  // long documents may then be encoded in line-aligned pieces, in parallel.
  virtual bool encodes_lines_independently() const { return false; }
};

// Byte-level: ids 0..255 are bytes, 256 = <eos>, 257 = <pad>.
class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int32_t kEos = 256;
  static constexpr int32_t kPad = 257;
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return 258; }
  int32_t eos() const override { return kEos; }
  int64_t bytes_of(int32_t id) const override { return id < 256 ? 1 : 0; }
  std::string name() const override { return "bytes"; }
  bool encodes_lines_independently() const override { return true; }
};

// "bytes" -> ByteTokenizer, "spm:PATH" -> SpmTokenizer (a SentencePiece .model);
// anything else is an error listing the valid specs.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec);

}  // namespace longtrain
