// Typed, recorded, strict reading of recipe mappings (see recipe_section.h).
#include "trainer/recipe_section.h"

#include <algorithm>
#include <sstream>

namespace longtrain {

template <> const char* yaml_type_name<int64_t>() { return "an integer"; }
template <> const char* yaml_type_name<int>() { return "an integer"; }
template <> const char* yaml_type_name<double>() { return "a number"; }
template <> const char* yaml_type_name<bool>() { return "true or false"; }
template <> const char* yaml_type_name<std::string>() { return "a string"; }
template <> const char* yaml_type_name<std::vector<int64_t>>() { return "a list of integers"; }
template <> const char* yaml_type_name<std::vector<std::string>>() { return "a list of strings"; }
template <> const char* yaml_type_name<YAML::Node>() { return "a value"; }

Section::Section(YAML::Node node, std::string path, std::string file, YAML::Node out)
    : node_(node), path_(std::move(path)), file_(std::move(file)), out_(out) {
  expect_map();
}

void Section::expect_map() const {
  if (node_ && !node_.IsNull() && !node_.IsMap()) {
    throw RecipeError(where(node_) + (path_.empty() ? "recipe" : path_) +
                      ": expected a mapping of keys to values");
  }
}

bool Section::has(const std::string& key) const {
  return node_ && node_.IsMap() && node_[key] && !node_[key].IsNull();
}

std::vector<std::string> Section::child_keys(const std::string& key) const {
  std::vector<std::string> out;
  if (!has(key)) return out;
  YAML::Node n = node_[key];
  if (!n.IsMap()) throw RecipeError(where(n) + full(key) + ": expected a mapping");
  for (const auto& kv : n) out.push_back(kv.first.as<std::string>());
  return out;
}

YAML::Node Section::raw(const std::string& key) const {
  return has(key) ? node_[key] : YAML::Node();
}

std::string Section::full(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

std::string Section::where(const YAML::Node& node) const {
  if (!node || node.IsNull()) return file_ + ": ";  // an absent section: its defaults
  if (!node.Mark().is_null()) {
    return file_ + ":" + std::to_string(node.Mark().line + 1) + ": ";
  }
  return "--set ";
}

Section Section::sub(const std::string& key) {
  read_.push_back(key);
  YAML::Node child_out(YAML::NodeType::Map);
  out_[key] = child_out;
  return Section(raw(key), full(key), file_, child_out);
}

void Section::check(bool ok, const std::string& key, const std::string& why) const {
  if (!ok) fail(key, why);
}

void Section::fail(const std::string& key, const std::string& why) const {
  YAML::Node at = has(key) ? node_[key] : node_;
  throw RecipeError(where(at) + full(key) + ": " + why);
}

void Section::finish() const {
  if (!node_ || !node_.IsMap()) return;
  for (const auto& kv : node_) {
    const std::string key = kv.first.as<std::string>();
    if (std::find(read_.begin(), read_.end(), key) != read_.end()) continue;
    std::vector<std::string> valid = read_;
    std::sort(valid.begin(), valid.end());
    valid.erase(std::unique(valid.begin(), valid.end()), valid.end());
    std::ostringstream msg;
    msg << where(kv.first) << "unknown key '" << key << "' in '"
        << (path_.empty() ? "recipe" : path_) << "' (valid keys: ";
    for (size_t i = 0; i < valid.size(); ++i) msg << (i ? ", " : "") << valid[i];
    msg << ")";
    throw RecipeError(msg.str());
  }
}

// A deep copy built node by node: built nodes carry no source mark, so messages
// about an overridden value name `--set` instead of a line of the override text.
static YAML::Node without_marks(const YAML::Node& n) {
  if (n.IsScalar()) return YAML::Node(n.Scalar());
  if (n.IsSequence()) {
    YAML::Node out(YAML::NodeType::Sequence);
    for (const auto& item : n) out.push_back(without_marks(item));
    return out;
  }
  if (n.IsMap()) {
    YAML::Node out(YAML::NodeType::Map);
    for (const auto& kv : n) out[kv.first.as<std::string>()] = without_marks(kv.second);
    return out;
  }
  return YAML::Node();
}

void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw RecipeError("--set " + assignment + ": expected key.path=value");
  }
  const std::string path = assignment.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw RecipeError("--set " + assignment + ": value is not valid YAML: " + e.msg);
  }
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) {
    if (p.empty()) throw RecipeError("--set " + assignment + ": empty key in path");
    parts.push_back(p);
  }
  // yaml-cpp nodes are references: walking with operator[] on copies edits the tree.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node parent = chain.back();
    if (!parent[parts[i]] || parent[parts[i]].IsNull()) parent[parts[i]] = YAML::Node(YAML::NodeType::Map);
    if (!parent[parts[i]].IsMap()) {
      throw RecipeError("--set " + assignment + ": '" + parts[i] + "' is not a mapping");
    }
    chain.push_back(parent[parts[i]]);
  }
  chain.back()[parts.back()] = without_marks(value);
}

}  // namespace longtrain
