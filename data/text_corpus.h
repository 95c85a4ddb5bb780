// Plain-text corpora: files, or directories of them (recursively, in sorted
// order so every machine sees the same documents), split into train and
// validation by document.
//
// Each file is a document. With a single file, its last `val_fraction` (cut at a
// line break) is the validation document, as in the enwik8/text8 protocol.
// With several, documents are held out evenly spaced by index.
#pragma once

#include <string>
#include <vector>

namespace longtrain {

struct TextSplit {
  std::vector<std::string> train, val;
  std::vector<std::string> files;  // what was read, in order
};

// Throws std::runtime_error naming the path for missing or unreadable files and
// for corpora with nothing to train or validate on.
TextSplit read_text_corpus(const std::vector<std::string>& paths, double val_fraction);

}  // namespace longtrain
