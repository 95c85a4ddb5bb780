// Documents streamed from input files, and their train/validation assignment,
// for `longtrain prepare`.
//
// A `.jsonl` file holds one JSON object per line, the document in its "text"
// field; any other file is one document (as data/text_corpus reads them).
// Empty documents are skipped. The split is data/text_corpus's, decided on the
// fly with one document of look-ahead: document i is held out when
// held_out(i, f); when that held out none, the last document is; a lone
// document is cut at a line break, its tail held out.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace longtrain {

struct Document {
  std::string text;
  std::string origin;       // "FILE" or "FILE:LINE", for messages
  int64_t input_bytes = 0;  // input consumed for it, for throughput
  bool val = false;         // held out for validation
};

class DocumentReader {
 public:
  explicit DocumentReader(std::vector<std::string> files);
  // The next non-empty document; false at the end. Throws std::runtime_error
  // naming FILE:LINE for a JSONL line that is not an object with a string "text".
  bool next(Document& doc);

 private:
  std::vector<std::string> files_;
  size_t file_ = 0;
  std::ifstream jsonl_;
  int64_t line_ = 0;
  bool in_jsonl_ = false;
};

class DocumentSplitter {
 public:
  // inputs: what the user named, for the message when there are no documents.
  DocumentSplitter(std::vector<std::string> files, double val_fraction, std::vector<std::string> inputs);
  // The next document with `val` set; false at the end. Throws
  // std::runtime_error when the inputs hold no document at all, or a lone
  // document too small to split.
  bool next(Document& doc);

 private:
  void emit(Document doc, bool val);
  void finish();

  DocumentReader reader_;
  double val_fraction_;
  std::vector<std::string> inputs_;
  std::vector<Document> ready_;  // emitted, not yet returned (front first)
  Document pending_;
  bool has_pending_ = false;
  bool ended_ = false;
  bool any_val_ = false;
  size_t index_ = 0;
};

bool is_jsonl(const std::string& path);

}  // namespace longtrain
