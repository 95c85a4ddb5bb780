// See listops.h.
#include "data/listops.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "data/rng.h"

namespace longtrain {
namespace {

const char* const kOps[] = {"MIN", "MAX", "MED", "SM"};

int64_t apply_op(const std::string& op, std::vector<int64_t> args) {
  if (op == "MIN") return *std::min_element(args.begin(), args.end());
  if (op == "MAX") return *std::max_element(args.begin(), args.end());
  if (op == "SM") {
    int64_t s = 0;
    for (int64_t a : args) s += a;
    return s % 10;
  }
  std::sort(args.begin(), args.end());
  const size_t n = args.size();
  return n % 2 ? args[n / 2] : (args[n / 2 - 1] + args[n / 2]) / 2;
}

// An expression of at most `budget` characters (budget >= 1).
std::string grow(Rng& rng, const ListOpsSpec& spec, int64_t budget, int64_t depth) {
  const std::string digit(1, static_cast<char>('0' + rng.below(10)));
  // The longest two-argument expression, "[MAX 1 2 ]", takes 10 characters.
  if (budget < 10 || depth >= spec.max_depth) return digit;
  const std::string op = kOps[rng.below(4)];
  std::string out = "[" + op;
  int64_t room = budget - static_cast<int64_t>(out.size()) - 2;  // " ]" closes it
  // Each argument costs its text plus a leading space.
  const int64_t max_k = std::max<int64_t>(2, std::min(spec.max_args, room / 2));
  const int64_t k = 2 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(max_k - 1)));
  // Which arguments are sub-expressions: each with probability 1/2, at least
  // one while the budget is far from filled, so items reach their length.
  std::vector<bool> nested(static_cast<size_t>(k));
  int64_t n_nested = 0;
  for (auto&& b : nested) {
    b = rng.below(2) == 0;
    n_nested += b;
  }
  if (n_nested == 0 && room > 2 * k + 10) {
    nested[rng.below(static_cast<uint64_t>(k))] = true;
    n_nested = 1;
  }
  int64_t share_left = room - 2 * (k - n_nested);  // digits take " d"
  int64_t nested_left = n_nested;
  for (int64_t i = 0; i < k; ++i) {
    std::string arg;
    if (nested[i]) {
      const int64_t share = share_left / nested_left - 1;
      arg = share >= 1 ? grow(rng, spec, share, depth + 1) : std::string(1, static_cast<char>('0' + rng.below(10)));
      share_left -= static_cast<int64_t>(arg.size()) + 1;
      nested_left -= 1;
    } else {
      arg = std::string(1, static_cast<char>('0' + rng.below(10)));
    }
    out += " " + arg;
  }
  return out + " ]";
}

struct Parser {
  const std::string& s;
  size_t i = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("listops: " + what + " at offset " + std::to_string(i));
  }
  void skip_spaces() {
    while (i < s.size() && s[i] == ' ') ++i;
  }
  // Returns (value, depth).
  std::pair<int64_t, int64_t> expr() {
    skip_spaces();
    if (i >= s.size()) fail("unexpected end");
    if (s[i] >= '0' && s[i] <= '9') return {s[i++] - '0', 0};
    if (s[i] != '[') fail("expected a digit or '['");
    ++i;
    const size_t start = i;
    while (i < s.size() && s[i] >= 'A' && s[i] <= 'Z') ++i;
    const std::string op = s.substr(start, i - start);
    if (op != "MIN" && op != "MAX" && op != "MED" && op != "SM") fail("unknown operator '" + op + "'");
    std::vector<int64_t> args;
    int64_t depth = 0;
    for (;;) {
      skip_spaces();
      if (i < s.size() && s[i] == ']') {
        ++i;
        break;
      }
      auto [v, d] = expr();
      args.push_back(v);
      depth = std::max(depth, d);
    }
    if (args.empty()) fail(op + " without arguments");
    return {apply_op(op, args), depth + 1};
  }
  std::pair<int64_t, int64_t> whole() {
    auto r = expr();
    skip_spaces();
    if (i != s.size()) fail("trailing text");
    return r;
  }
};

}  // namespace

ListOpsItem listops_item(const ListOpsSpec& spec, uint64_t seed, int64_t index) {
  if (spec.length < 1 || spec.max_depth < 1 || spec.max_args < 2) {
    throw std::invalid_argument("listops needs length >= 1, max_depth >= 1, max_args >= 2");
  }
  Rng rng(mix_keys(seed, static_cast<uint64_t>(index), 0x11570b5));
  ListOpsItem item;
  item.text = grow(rng, spec, spec.length, 0);
  item.label = listops_value(item.text);
  return item;
}

int64_t listops_value(const std::string& expression) { return Parser{expression}.whole().first; }

int64_t listops_depth(const std::string& expression) { return Parser{expression}.whole().second; }

}  // namespace longtrain
