// See finetune_examples.h.
#include "data/finetune_examples.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace longtrain {
namespace {

// Calls fn(json, "path:line") for every non-blank line.
template <typename Fn>
void for_each_line(const std::string& path, Fn fn) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(where + ": not JSON (" + e.what() + ")");
    }
    if (!j.is_object()) throw std::runtime_error(where + ": expected a JSON object");
    fn(j, where);
  }
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string()) throw std::runtime_error(where + ": needs a string \"" + key + "\"");
  return j[key].get<std::string>();
}

void append(std::vector<int32_t>& to, const std::vector<int32_t>& from) { to.insert(to.end(), from.begin(), from.end()); }

}  // namespace

ClassificationSet read_classification_jsonl(const std::string& path, const Tokenizer& tok, int64_t max_len) {
  if (max_len < 2) throw std::invalid_argument("classification max_len must be >= 2");
  ClassificationSet set;
  std::vector<std::string> raw_names;  // per example, when labels are strings
  bool strings = false, ints = false;
  int64_t max_label = -1;
  for_each_line(path, [&](const nlohmann::json& j, const std::string& where) {
    ClassificationExample ex;
    ex.tokens.push_back(tok.eos());
    append(ex.tokens, tok.encode(string_field(j, "text", where)));
    if (static_cast<int64_t>(ex.tokens.size()) > max_len) ex.tokens.resize(static_cast<size_t>(max_len));
    if (!j.contains("label")) throw std::runtime_error(where + ": needs a \"label\"");
    const auto& label = j["label"];
    if (label.is_number_integer()) {
      ex.label = label.get<int64_t>();
      if (ex.label < 0) throw std::runtime_error(where + ": a label must be >= 0");
      max_label = std::max(max_label, ex.label);
      ints = true;
      raw_names.emplace_back();
    } else if (label.is_string()) {
      strings = true;
      raw_names.push_back(label.get<std::string>());
    } else {
      throw std::runtime_error(where + ": \"label\" must be an integer or a string");
    }
    if (ints && strings) throw std::runtime_error(where + ": labels mix integers and strings");
    set.examples.push_back(std::move(ex));
  });
  if (strings) {
    set.label_names = raw_names;
    std::sort(set.label_names.begin(), set.label_names.end());
    set.label_names.erase(std::unique(set.label_names.begin(), set.label_names.end()), set.label_names.end());
    for (size_t i = 0; i < set.examples.size(); ++i) {
      set.examples[i].label = std::lower_bound(set.label_names.begin(), set.label_names.end(), raw_names[i]) -
                              set.label_names.begin();
    }
    set.num_classes = static_cast<int64_t>(set.label_names.size());
  } else {
    set.num_classes = max_label + 1;
  }
  return set;
}

QaSet read_qa_jsonl(const std::string& path, const Tokenizer& tok, int64_t max_len) {
  QaSet set;
  for_each_line(path, [&](const nlohmann::json& j, const std::string& where) {
    const std::string context = string_field(j, "context", where), question = string_field(j, "question", where);
    if (!j.contains("answer")) throw std::runtime_error(where + ": needs an \"answer\"");
    std::string answer;
    size_t at = std::string::npos;
    if (j["answer"].is_string()) {
      answer = j["answer"].get<std::string>();
      at = context.find(answer);
      if (answer.empty() || at == std::string::npos) {
        throw std::runtime_error(where + ": the answer \"" + answer + "\" does not occur in the context");
      }
    } else if (j["answer"].is_object()) {
      answer = string_field(j["answer"], "text", where);
      if (!j["answer"].contains("start") || !j["answer"]["start"].is_number_integer()) {
        throw std::runtime_error(where + ": the answer object needs an integer \"start\"");
      }
      at = j["answer"]["start"].get<size_t>();
      if (answer.empty() || context.compare(at, answer.size(), answer) != 0) {
        throw std::runtime_error(where + ": the context does not hold \"" + answer + "\" at " + std::to_string(at));
      }
    } else {
      throw std::runtime_error(where + ": \"answer\" must be a string or {\"text\", \"start\"}");
    }
    QaExample ex;
    ex.tokens.push_back(tok.eos());
    append(ex.tokens, tok.encode(question));
    ex.tokens.push_back(tok.eos());
    ex.question_len = static_cast<int64_t>(ex.tokens.size());
    append(ex.tokens, tok.encode(context.substr(0, at)));
    ex.start = static_cast<int64_t>(ex.tokens.size());
    append(ex.tokens, tok.encode(answer));
    ex.end = static_cast<int64_t>(ex.tokens.size()) - 1;
    append(ex.tokens, tok.encode(context.substr(at + answer.size())));
    if (ex.end >= max_len) {
      set.dropped += 1;
      return;
    }
    if (static_cast<int64_t>(ex.tokens.size()) > max_len) ex.tokens.resize(static_cast<size_t>(max_len));
    set.examples.push_back(std::move(ex));
  });
  return set;
}

}  // namespace longtrain
