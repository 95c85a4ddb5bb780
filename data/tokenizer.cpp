// See tokenizer.h.
#include "data/tokenizer.h"

#include <stdexcept>

#include "data/spm_tokenizer.h"

namespace longtrain {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) out.push_back(static_cast<char>(id));
    else if (id == kEos) out += "\n<eos>\n";
  }
  return out;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (spec.rfind("spm:", 0) == 0 && spec.size() > 4) return std::make_unique<SpmTokenizer>(spec.substr(4));
  throw std::invalid_argument("unknown tokenizer '" + spec +
                              "' (valid: bytes, spm:PATH with PATH a SentencePiece .model file)");
}

}  // namespace longtrain
