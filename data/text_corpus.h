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

// The files `paths` name, directories expanded recursively in sorted order.
// Throws std::runtime_error naming a missing path or a directory without files.
std::vector<std::string> list_corpus_files(const std::vector<std::string>& paths);

// The whole file; throws std::runtime_error naming it when unreadable.
std::string read_text_file(const std::string& path);

// Where a lone document is cut into train [0, cut) and validation [cut, end):
// just after the last line break at or before (1 - val_fraction) of its bytes.
// Returns 0 or text.size() when it cannot be split.
size_t tail_split_point(const std::string& text, double val_fraction);

// Whether document `index` is held out: floor((i+1) f) > floor(i f), which
// spaces held-out documents evenly and holds out floor(n f) of n.
bool held_out(size_t index, double val_fraction);

}  // namespace longtrain
