// ListOps (Nangia & Bowman 2018; the Long Range Arena version, Tay et al.
// 2021): nested prefix expressions over the digits 0-9 whose value, a digit,
// is the class to predict.
//
//   [MAX 2 9 [MIN 4 7 ] 0 ]  -> 9
//
// Operators: MIN, MAX, MED (median; with an even count the floor of the mean
// of the two middle values, as int(np.median) in the original generator),
// SM (sum modulo 10). Tokens are separated by single spaces, so with the byte
// tokenizer an expression of n characters is n tokens.
//
// Items are grown to a target length rather than drawn and rejected: a node
// splits its character budget among 2..max_args arguments, each a digit or a
// sub-expression, down to max_depth. An item is at most `length` characters
// and, from 10 characters up (and when the depth limit allows), at least half
// of it (checked for every length from 10 to 3000). Seeded by
// (seed, index): the same items on every machine.
#pragma once

#include <cstdint>
#include <string>

namespace longtrain {

struct ListOpsSpec {
  int64_t length = 2000;  // target characters (LRA: up to 2000 tokens)
  int64_t max_depth = 10;
  int64_t max_args = 10;
};

struct ListOpsItem {
  std::string text;
  int64_t label = 0;  // the expression's value, 0-9
};

ListOpsItem listops_item(const ListOpsSpec& spec, uint64_t seed, int64_t index);

// The value of an expression in the format above; throws std::invalid_argument
// naming the offset of a malformed one.
int64_t listops_value(const std::string& expression);

// Nesting depth (a bare digit is 0).
int64_t listops_depth(const std::string& expression);

}  // namespace longtrain
