// See spm_tokenizer.h.
#include "data/spm_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <stdexcept>
#include <unordered_map>

namespace longtrain {
namespace {

// "▁", SentencePiece's escaped space, in UTF-8.
constexpr std::string_view kSpaceMark = "\xE2\x96\x81";
// Fixed, so a model trained on the same text is the same on every machine.
constexpr unsigned kSpmSeed = 20240607;
constexpr int kSpmThreads = 4;

std::vector<int> as_int(const std::vector<int32_t>& ids) { return std::vector<int>(ids.begin(), ids.end()); }

int64_t surface_bytes(std::string_view piece) {
  int64_t n = 0;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      n += 1;
      i += kSpaceMark.size();
    } else {
      n += 1;
      i += 1;
    }
  }
  return n;
}

// One training sentence at a time: the lines of each document, long lines cut
// at UTF-8 character boundaries.
class DocumentLines : public sentencepiece::SentenceIterator {
 public:
  explicit DocumentLines(const std::function<bool(std::string&)>& next) : next_(next) { Next(); }
  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }

  void Next() override {
    while (true) {
      if (pos_ >= doc_.size()) {
        if (!next_(doc_)) {
          done_ = true;
          return;
        }
        pos_ = 0;
        continue;
      }
      size_t end = doc_.find('\n', pos_);
      if (end == std::string::npos) end = doc_.size();
      size_t stop = end;
      if (stop - pos_ > kSpmMaxSentenceBytes) {
        stop = pos_ + kSpmMaxSentenceBytes;
        while (stop > pos_ + 1 && (static_cast<unsigned char>(doc_[stop]) & 0xC0) == 0x80) --stop;
      }
      value_.assign(doc_, pos_, stop - pos_);
      pos_ = stop == end ? end + 1 : stop;
      if (!value_.empty()) return;
    }
  }

 private:
  const std::function<bool(std::string&)>& next_;
  std::string doc_, value_;
  size_t pos_ = 0;
  bool done_ = false;
};

}  // namespace

SpmTokenizer::SpmTokenizer(const std::string& model_path)
    : path_(model_path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const auto status = sp_->Load(model_path);
  if (!status.ok()) {
    throw std::runtime_error(model_path + ": cannot load SentencePiece model: " + status.ToString());
  }
  eos_ = sp_->eos_id();
  if (eos_ < 0)
    throw std::runtime_error(model_path + ": SentencePiece model has no </s> piece to separate documents");
  const int n = sp_->GetPieceSize();
  bytes_.resize(static_cast<size_t>(n));
  bool newline_in_piece = false;
  for (int id = 0; id < n; ++id) {
    if (sp_->IsControl(id) || sp_->IsUnknown(id) || sp_->IsUnused(id)) continue;
    if (sp_->IsByte(id)) {
      bytes_[id] = 1;
      continue;
    }
    const std::string piece = sp_->IdToPiece(id);
    bytes_[id] = surface_bytes(piece);
    newline_in_piece |= piece.find('\n') != std::string::npos;
  }
  // Models trained here pass; others (normalising, with a dummy prefix) are
  // encoded a document at a time.
  lines_independent_ = !newline_in_piece;
  const std::pair<const char*, const char*> probes[] = {{"ab c\n", "  de\tf"}, {"x\n", "\n y"}, {"1\n", "z"}};
  for (const auto& [a, b] : probes) {
    if (!lines_independent_) break;
    auto whole = encode(std::string(a) + b);
    auto left = encode(a), right = encode(b);
    left.insert(left.end(), right.begin(), right.end());
    lines_independent_ = whole == left;
  }
}

SpmTokenizer::~SpmTokenizer() = default;

std::vector<int32_t> SpmTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(absl::string_view(text.data(), text.size()), &ids);
  if (!status.ok()) throw std::runtime_error(path_ + ": encoding failed: " + status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SpmTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  std::vector<int32_t> run;
  auto flush = [&] {
    std::string text;
    const auto status = sp_->Decode(as_int(run), &text);
    if (!status.ok()) throw std::runtime_error(path_ + ": decoding failed: " + status.ToString());
    out += text;
    run.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (id == eos_) {
      flush();
      out += "\n<eos>\n";  // as ByteTokenizer shows document ends
    } else {
      run.push_back(id);
    }
  }
  flush();
  return out;
}

int64_t SpmTokenizer::bytes_of(int32_t id) const {
  return id >= 0 && id < vocab_size() ? bytes_[static_cast<size_t>(id)] : 0;
}

std::string train_spm(const SpmTrainOptions& options,
                      const std::function<bool(std::string&)>& next_document) {
  if (options.model_type != "bpe" && options.model_type != "unigram") {
    throw std::invalid_argument("unknown SentencePiece model type '" + options.model_type +
                                "' (valid: bpe, unigram)");
  }
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      // Rare characters become byte pieces rather than taking vocabulary slots.
      {"character_coverage", "0.9995"},
      // Exact round trip: no normalisation, no dummy prefix, whitespace as is.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"max_sentence_length", std::to_string(kSpmMaxSentenceBytes)},
      // At most this many sentences are sampled (with the fixed seed) from a large corpus.
      {"input_sentence_size", "1000000"},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(kSpmThreads)},
      {"minloglevel", "1"},
  };
  sentencepiece::SetRandomGeneratorSeed(kSpmSeed);
  DocumentLines lines(next_document);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  if (!status.ok()) {
    throw std::runtime_error("SentencePiece training (" + options.model_type + ", vocab " +
                             std::to_string(options.vocab_size) + ") failed: " + status.ToString());
  }
  return model;
}

}  // namespace longtrain
