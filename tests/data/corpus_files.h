// Small corpora on disk for the data-pipeline tests: fresh temporary
// directories, files, and generated English-like text (a fixed word list, so
// a SentencePiece model of ~300 pieces trains on it in well under a second).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/rng.h"
#include "trainer/checkpoint.h"

namespace longtrain {

inline std::string fresh_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("longtrain_data_" + name);
  remove_tree(dir.string());
  std::filesystem::create_directories(dir);
  return dir.string();
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// `lines` lines of words drawn with `seed`; the same on every machine.
inline std::string generated_text(uint64_t seed, int lines) {
  static const char* kWords[] = {"the", "river",  "quiet", "lamp",  "walks", "past",
                                 "old", "bridge", "sings", "to",    "a",     "fox",
                                 "and", "stone",  "under", "light", "north", "road"};
  Rng rng(seed);
  std::string text;
  for (int l = 0; l < lines; ++l) {
    const int n = 4 + static_cast<int>(rng.below(8));
    for (int w = 0; w < n; ++w) {
      text += (w ? " " : "");
      text += kWords[rng.below(sizeof kWords / sizeof kWords[0])];
    }
    text += ".\n";
  }
  return text;
}

}  // namespace longtrain
