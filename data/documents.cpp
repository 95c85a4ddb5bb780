// See documents.h.
#include "data/documents.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "data/text_corpus.h"

namespace longtrain {

bool is_jsonl(const std::string& path) {
  const std::string ext = ".jsonl";
  return path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0;
}

DocumentReader::DocumentReader(std::vector<std::string> files) : files_(std::move(files)) {}

bool DocumentReader::next(Document& doc) {
  while (true) {
    if (in_jsonl_) {
      std::string line;
      if (!std::getline(jsonl_, line)) {
        if (jsonl_.bad()) throw std::runtime_error(files_[file_ - 1] + ": read failed");
        in_jsonl_ = false;
        jsonl_.close();
        continue;
      }
      ++line_;
      const std::string where = files_[file_ - 1] + ":" + std::to_string(line_);
      if (std::all_of(line.begin(), line.end(),
                      [](char c) { return std::isspace(static_cast<unsigned char>(c)); })) {
        continue;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        throw std::runtime_error(where + ": invalid JSON: " + e.what());
      }
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
        throw std::runtime_error(where + ": expected a JSON object with a string field \"text\"");
      }
      doc.text = j["text"].get<std::string>();
      doc.origin = where;
      doc.input_bytes = static_cast<int64_t>(line.size()) + 1;
      if (doc.text.empty()) continue;
      return true;
    }
    if (file_ >= files_.size()) return false;
    const std::string& path = files_[file_++];
    if (is_jsonl(path)) {
      jsonl_.open(path, std::ios::binary);
      if (!jsonl_) throw std::runtime_error(path + ": cannot open for reading");
      in_jsonl_ = true;
      line_ = 0;
      continue;
    }
    doc.text = read_text_file(path);
    doc.origin = path;
    doc.input_bytes = static_cast<int64_t>(doc.text.size());
    if (!doc.text.empty()) return true;
  }
}

DocumentSplitter::DocumentSplitter(std::vector<std::string> files, double val_fraction,
                                   std::vector<std::string> inputs)
    : reader_(std::move(files)), val_fraction_(val_fraction), inputs_(std::move(inputs)) {}

void DocumentSplitter::emit(Document doc, bool val) {
  doc.val = val;
  any_val_ |= val;
  ready_.push_back(std::move(doc));
}

void DocumentSplitter::finish() {
  ended_ = true;
  if (!has_pending_) {
    if (index_ > 0) return;
    std::string named;
    for (const auto& in : inputs_) named += (named.empty() ? "" : ", ") + in;
    throw std::runtime_error(named + ": no documents to prepare (every file is empty)");
  }
  has_pending_ = false;
  if (index_ == 0) {
    // A lone document (enwik8, text8): its tail is the validation set.
    const size_t cut = tail_split_point(pending_.text, val_fraction_);
    if (cut == 0 || cut >= pending_.text.size()) {
      throw std::runtime_error(pending_.origin + ": too small to split into train and validation");
    }
    Document tail;
    tail.text = pending_.text.substr(cut);
    tail.origin = pending_.origin + " (tail)";
    pending_.text.resize(cut);
    emit(std::move(pending_), false);
    emit(std::move(tail), true);
  } else {
    emit(std::move(pending_), held_out(index_, val_fraction_) || !any_val_);
  }
  ++index_;
}

bool DocumentSplitter::next(Document& doc) {
  while (ready_.empty()) {
    if (ended_) return false;
    Document d;
    if (reader_.next(d)) {
      if (has_pending_) {
        emit(std::move(pending_), held_out(index_, val_fraction_));
        ++index_;
      }
      pending_ = std::move(d);
      has_pending_ = true;
    } else {
      finish();
    }
  }
  doc = std::move(ready_.front());
  ready_.erase(ready_.begin());
  return true;
}

}  // namespace longtrain
