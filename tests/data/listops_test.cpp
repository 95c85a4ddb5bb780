// ListOps: the evaluator on hand-computed expressions, and generated items
// that are seeded, within their length, within the depth limit, well formed,
// and labelled with their value.
#include <gtest/gtest.h>

#include <set>

#include "data/listops.h"

namespace longtrain {
namespace {

TEST(ListOps, KnownValues) {
  EXPECT_EQ(listops_value("7"), 7);
  EXPECT_EQ(listops_value("[MAX 2 9 [MIN 4 7 ] 0 ]"), 9);
  EXPECT_EQ(listops_value("[MIN 5 [MAX 1 2 ] 8 ]"), 2);
  EXPECT_EQ(listops_value("[SM 9 8 7 ]"), 4);       // 24 mod 10
  EXPECT_EQ(listops_value("[MED 3 1 9 ]"), 3);      // odd count: the middle
  EXPECT_EQ(listops_value("[MED 1 2 5 9 ]"), 3);    // even: floor((2 + 5) / 2)
  EXPECT_EQ(listops_value("[SM [MED 4 6 ] [MAX 0 0 ] 7 ]"), 2);
  EXPECT_EQ(listops_depth("[SM [MED 4 [MIN 1 2 ] ] 7 ]"), 3);
  EXPECT_EQ(listops_depth("5"), 0);
  EXPECT_THROW(listops_value("[MAX 1 2"), std::invalid_argument);
  EXPECT_THROW(listops_value("[FOO 1 2 ]"), std::invalid_argument);
  EXPECT_THROW(listops_value("[MIN ]"), std::invalid_argument);
  EXPECT_THROW(listops_value("1 2"), std::invalid_argument);
}

TEST(ListOps, ItemsAreSeededBoundedAndLabelled) {
  for (int64_t length : {10, 50, 500, 2000, 3000}) {
    ListOpsSpec spec;
    spec.length = length;
    std::set<int64_t> labels;
    for (int64_t i = 0; i < 20; ++i) {
      SCOPED_TRACE("length " + std::to_string(length) + " item " + std::to_string(i));
      const auto item = listops_item(spec, 3, i);
      EXPECT_EQ(item.text, listops_item(spec, 3, i).text);
      EXPECT_LE(static_cast<int64_t>(item.text.size()), length);
      EXPECT_GE(static_cast<int64_t>(item.text.size()), length / 2);
      EXPECT_LE(listops_depth(item.text), spec.max_depth);
      EXPECT_EQ(item.label, listops_value(item.text));
      labels.insert(item.label);
    }
    if (length >= 500) {
      EXPECT_GE(labels.size(), 4u) << "labels are too uniform";
    }
  }
  ListOpsSpec shallow;
  shallow.length = 2000;
  shallow.max_depth = 2;
  // The depth limit wins over the length: a depth-2 tree of <= 10 arguments is short.
  const auto item = listops_item(shallow, 1, 0);
  EXPECT_LE(listops_depth(item.text), 2);
  EXPECT_NE(listops_item(shallow, 1, 0).text, listops_item(shallow, 2, 0).text);
}

}  // namespace
}  // namespace longtrain
