// Fine-tuning JSONL: encodings with the classification token and the
// question's global prefix, answer spans that decode to the answer text,
// sorted string labels, truncation, and errors that name the line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/finetune_examples.h"

namespace longtrain {
namespace {

std::string write_file(const std::string& name, const std::string& text) {
  const auto p = std::filesystem::temp_directory_path() / ("longtrain_ft_" + name);
  std::ofstream(p) << text;
  return p.string();
}

TEST(FinetuneExamples, ClassificationLabelsAndTokens) {
  ByteTokenizer tok;
  const auto path = write_file("cls.jsonl", "{\"text\": \"good film\", \"label\": \"pos\"}\n\n"
                                            "{\"text\": \"bad\", \"label\": \"neg\"}\n"
                                            "{\"text\": \"a very long review indeed\", \"label\": \"pos\"}\n");
  const auto set = read_classification_jsonl(path, tok, 8);
  ASSERT_EQ(set.examples.size(), 3u);
  EXPECT_EQ(set.label_names, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(set.num_classes, 2);
  EXPECT_EQ(set.examples[0].label, 1);
  EXPECT_EQ(set.examples[1].label, 0);
  EXPECT_EQ(set.examples[0].tokens[0], tok.eos());
  EXPECT_EQ(tok.decode({set.examples[1].tokens.begin() + 1, set.examples[1].tokens.end()}), "bad");
  EXPECT_EQ(set.examples[2].tokens.size(), 8u);  // cut to max_len
  const auto ints = read_classification_jsonl(write_file("ints.jsonl", "{\"text\": \"x\", \"label\": 4}\n"), tok, 8);
  EXPECT_EQ(ints.num_classes, 5);
  try {
    read_classification_jsonl(write_file("bad.jsonl", "{\"text\": \"x\", \"label\": 1}\n{\"text\": 3}\n"), tok, 8);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
}

TEST(FinetuneExamples, QaSpansDecodeToTheAnswer) {
  ByteTokenizer tok;
  const auto path = write_file(
      "qa.jsonl",
      "{\"context\": \"the fox is red. the sky is blue.\", \"question\": \"sky?\", \"answer\": \"blue\"}\n"
      "{\"context\": \"is is is\", \"question\": \"q\", \"answer\": {\"text\": \"is\", \"start\": 3}}\n"
      "{\"context\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa tail\", \"question\": \"q\", \"answer\": \"tail\"}\n");
  const auto set = read_qa_jsonl(path, tok, 40);
  ASSERT_EQ(set.examples.size(), 2u);
  EXPECT_EQ(set.dropped, 1);  // its answer lies beyond 40 tokens
  for (const auto& ex : set.examples) {
    EXPECT_EQ(ex.tokens[0], tok.eos());
    EXPECT_EQ(ex.tokens[ex.question_len - 1], tok.eos());
  }
  const auto& a = set.examples[0];
  EXPECT_EQ(a.question_len, 6);  // eos "sky?" eos
  EXPECT_EQ(tok.decode({a.tokens.begin() + a.start, a.tokens.begin() + a.end + 1}), "blue");
  const auto& b = set.examples[1];
  EXPECT_EQ(b.start, b.question_len + 3);  // the second "is", as the offset says
  EXPECT_THROW(read_qa_jsonl(write_file("qa_bad.jsonl", "{\"context\": \"abc\", \"question\": \"q\", \"answer\": \"z\"}\n"),
                             tok, 40),
               std::runtime_error);
}

}  // namespace
}  // namespace longtrain
