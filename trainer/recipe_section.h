// One mapping of a YAML recipe read into typed fields.
//
// Every read is recorded, with the default where the key was absent, so that
// `resolved()` is the recipe as the program will run it. `finish()` rejects keys
// that nobody read, naming the file:line and the valid keys. Values given on the
// command line (`--set`) have no line and are named as such.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace longtrain {

struct RecipeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Section {
 public:
  // node: the mapping to read (Null means "all defaults"); path: its dotted
  // path in the recipe ("" for the root); file: the recipe's file name.
  Section(YAML::Node node, std::string path, std::string file, YAML::Node out);

  // Reads an optional key into `value`; a missing key keeps the default.
  template <class T>
  Section& get(const std::string& key, T& value);

  // A nested mapping, read by its own Section; its resolved values land in ours.
  Section sub(const std::string& key);

  // Raises "file:line: path.key: why" when !ok.
  void check(bool ok, const std::string& key, const std::string& why) const;
  [[noreturn]] void fail(const std::string& key, const std::string& why) const;

  // Rejects keys present in the YAML that were never read.
  void finish() const;

  const std::string& path() const { return path_; }
  // "file:line: path" of this mapping, for messages raised after parsing.
  std::string origin() const { return where(node_) + (path_.empty() ? "recipe" : path_); }
  const std::string& file() const { return file_; }
  bool has(const std::string& key) const;
  // Keys of the mapping under `key` (empty if absent); throws if it is not a mapping.
  std::vector<std::string> child_keys(const std::string& key) const;
  YAML::Node raw(const std::string& key) const;

 private:
  std::string where(const YAML::Node& node) const;
  std::string full(const std::string& key) const;
  void expect_map() const;

  YAML::Node node_;
  std::string path_;
  std::string file_;
  YAML::Node out_;
  std::vector<std::string> read_;
};

// Applies `a.b.c=value` (value parsed as YAML) onto a recipe tree.
void apply_override(YAML::Node& root, const std::string& assignment);

// Type names used in messages ("an integer", "a list of integers", ...).
template <class T>
const char* yaml_type_name();

template <class T>
Section& Section::get(const std::string& key, T& value) {
  read_.push_back(key);
  if (has(key)) {
    YAML::Node v = node_[key];
    try {
      value = v.as<T>();
    } catch (const YAML::Exception&) {
      std::string got = v.IsScalar() ? "'" + v.Scalar() + "'" : (v.IsSequence() ? "a list" : "a mapping");
      throw RecipeError(where(v) + full(key) + ": expected " + yaml_type_name<T>() + ", got " + got);
    }
  }
  out_[key] = value;
  return *this;
}

}  // namespace longtrain
