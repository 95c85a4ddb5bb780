// Passkey and MQAR items: seeded and reproducible, within their length, the
// fact at the asked depth, and every answer the value its key was given.
#include <gtest/gtest.h>

#include <map>
#include <regex>

#include "data/recall_tasks.h"

namespace longtrain {
namespace {

TEST(Passkey, SameSeedSameItemAndDifferentOtherwise) {
  EXPECT_EQ(passkey_item(300, 0.5, 1, 0).text(), passkey_item(300, 0.5, 1, 0).text());
  EXPECT_NE(passkey_item(300, 0.5, 1, 0).text(), passkey_item(300, 0.5, 1, 1).text());
  EXPECT_NE(passkey_item(300, 0.5, 1, 0).text(), passkey_item(300, 0.5, 2, 0).text());
}

TEST(Passkey, LengthDepthAndAnswer) {
  for (int64_t length : {64, 257, 1000}) {
    for (double depth : {0.0, 0.3, 1.0}) {
      SCOPED_TRACE("length " + std::to_string(length) + " depth " + std::to_string(depth));
      const auto item = passkey_item(length, depth, 7, 3);
      const std::string text = item.text();
      // Within one filler sentence (<= 40 characters) of the length, never over.
      EXPECT_LE(static_cast<int64_t>(text.size()), length);
      EXPECT_GT(static_cast<int64_t>(text.size()), length - 40);
      ASSERT_EQ(item.pieces.size(), 3u);
      ASSERT_TRUE(item.pieces[1].answer);
      EXPECT_EQ(item.num_answers(), 1);
      std::smatch m;
      ASSERT_TRUE(std::regex_search(text, m, std::regex("facts: ([a-z]{3})([0-9]{3})\n")));
      // The question asks the hidden key and the answer is its value.
      EXPECT_EQ(item.pieces[0].text.substr(item.pieces[0].text.size() - 7), "ask " + m[1].str());
      EXPECT_EQ(item.pieces[1].text, m[2].str());
      // As in the corpus, the question follows a sentence or the fact directly.
      const std::string& q = item.pieces[0].text;
      EXPECT_TRUE(q.compare(q.size() - 9, 2, ". ") == 0 || q[q.size() - 8] == '\n') << q.substr(q.size() - 12);
      // The fact sits at the asked share of the filler (to one sentence).
      const double filler = static_cast<double>(text.size()) - 14 - 12;
      EXPECT_NEAR(static_cast<double>(m.position(0)), depth * filler, 40.0);
    }
  }
  EXPECT_EQ(passkey_item(300, 0.0, 1, 0).text().rfind("facts: ", 0), 0u);
  EXPECT_THROW(passkey_item(20, 0.5, 1, 0), std::invalid_argument);
  EXPECT_THROW(passkey_item(300, 1.5, 1, 0), std::invalid_argument);
}

TEST(Mqar, EveryKeyAskedOnceWithItsValue) {
  for (int64_t pairs : {1, 4, 16}) {
    SCOPED_TRACE("pairs " + std::to_string(pairs));
    const int64_t length = 512;
    const auto item = mqar_item(length, pairs, 5, 2);
    const std::string text = item.text();
    EXPECT_LE(static_cast<int64_t>(text.size()), length);
    EXPECT_GT(static_cast<int64_t>(text.size()), length - 40);  // short by less than a filler sentence
    EXPECT_EQ(text, mqar_item(length, pairs, 5, 2).text());
    EXPECT_NE(text, mqar_item(length, pairs, 5, 3).text());
    // The table: pairs distinct keys.
    const std::string table = text.substr(0, text.find('\n'));
    std::map<std::string, std::string> facts;
    const std::regex fact("([a-z]{3})([0-9]{3})");
    for (auto it = std::sregex_iterator(table.begin(), table.end(), fact); it != std::sregex_iterator(); ++it) {
      facts[(*it)[1].str()] = (*it)[2].str();
    }
    EXPECT_EQ(static_cast<int64_t>(facts.size()), pairs);
    // Each answer follows "ask KEY" and is KEY's value; every key once.
    EXPECT_EQ(item.num_answers(), pairs);
    std::map<std::string, int> asked;
    for (size_t i = 0; i < item.pieces.size(); ++i) {
      if (!item.pieces[i].answer) continue;
      const std::string& before = item.pieces[i - 1].text;
      const std::string key = before.substr(before.size() - 3);
      EXPECT_EQ(before.substr(before.size() - 7, 4), "ask ");
      EXPECT_EQ(item.pieces[i].text, facts[key]);
      asked[key] += 1;
    }
    EXPECT_EQ(static_cast<int64_t>(asked.size()), pairs);
  }
  EXPECT_THROW(mqar_item(100, 16, 1, 0), std::invalid_argument);
  EXPECT_THROW(mqar_item(100, 0, 1, 0), std::invalid_argument);
}

}  // namespace
}  // namespace longtrain
