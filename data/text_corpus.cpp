// See text_corpus.h.
#include "data/text_corpus.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace longtrain {
namespace fs = std::filesystem;

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path + ": read failed");
  return ss.str();
}

std::vector<std::string> list_corpus_files(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const auto& path : paths) {
    fs::path p(path);
    if (!fs::exists(p)) throw std::runtime_error(path + ": no such file or directory");
    if (fs::is_directory(p)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) found.push_back(e.path().string());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) throw std::runtime_error(path + ": directory contains no files");
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(path);
    }
  }
  return files;
}

size_t tail_split_point(const std::string& text, double val_fraction) {
  size_t cut = static_cast<size_t>(std::floor(text.size() * (1.0 - val_fraction)));
  const size_t nl = text.rfind('\n', cut);
  if (nl != std::string::npos && nl > 0) cut = nl + 1;
  return cut;
}

bool held_out(size_t index, double val_fraction) {
  return std::floor((index + 1) * val_fraction) > std::floor(index * val_fraction);
}

TextSplit read_text_corpus(const std::vector<std::string>& paths, double val_fraction) {
  if (paths.empty()) throw std::runtime_error("data.paths is empty: name text files or directories");
  TextSplit split;
  split.files = list_corpus_files(paths);
  std::vector<std::string> docs;
  for (const auto& f : split.files) {
    std::string text = read_text_file(f);
    if (!text.empty()) docs.push_back(std::move(text));
  }
  if (docs.empty()) throw std::runtime_error("text corpus is empty: every file in data.paths has no bytes");

  if (docs.size() == 1) {
    std::string& all = docs[0];
    const size_t cut = tail_split_point(all, val_fraction);
    if (cut == 0 || cut >= all.size()) {
      throw std::runtime_error(split.files[0] + ": too small to split into train and validation");
    }
    split.train.push_back(all.substr(0, cut));
    split.val.push_back(all.substr(cut));
    return split;
  }
  for (size_t i = 0; i < docs.size(); ++i) {
    (held_out(i, val_fraction) ? split.val : split.train).push_back(std::move(docs[i]));
  }
  if (split.val.empty()) {
    split.val.push_back(split.train.back());
    split.train.pop_back();
  }
  if (split.train.empty()) throw std::runtime_error("text corpus: no documents left for training");
  return split;
}

}  // namespace longtrain
