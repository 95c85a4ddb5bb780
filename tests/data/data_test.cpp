// Data: the synthetic corpus is deterministic and marks real long-range
// targets; text corpora split by document with clear errors; the sampler is a
// pure function of (seed, step, micro, rank); the byte tokenizer round-trips.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "data/dataset.h"
#include "data/sampler.h"
#include "data/synthetic.h"
#include "data/text_corpus.h"
#include "data/tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "tests/trainer/test_recipes.h"

namespace longtrain {
namespace fs = std::filesystem;
namespace {

TEST(Synthetic, DeterministicAndSeeded) {
  SyntheticSpec spec;
  EXPECT_EQ(synthetic_document(spec, 7, 3).text, synthetic_document(spec, 7, 3).text);
  EXPECT_NE(synthetic_document(spec, 7, 3).text, synthetic_document(spec, 7, 4).text);
  EXPECT_NE(synthetic_document(spec, 7, 3).text, synthetic_document(spec, 8, 3).text);
}

TEST(Synthetic, LongRangeTargetsAreRecalledValues) {
  SyntheticSpec spec{5, 9, 3};
  const auto doc = synthetic_document(spec, 11, 0);
  ASSERT_EQ(doc.long_range.size(), 9u * 3u);
  const std::string facts = doc.text.substr(0, doc.text.find('\n'));
  for (size_t q = 0; q < doc.long_range.size(); q += 3) {
    const int64_t at = doc.long_range[q];
    // "ask kkkddd": the key sits just before the three marked digits.
    ASSERT_EQ(doc.text.substr(at - 7, 4), "ask ");
    const std::string key = doc.text.substr(at - 3, 3);
    const std::string value = doc.text.substr(at, 3);
    for (char c : value) EXPECT_TRUE(c >= '0' && c <= '9');
    EXPECT_NE(facts.find(" " + key + value), std::string::npos)
        << "recalled " << key << "=" << value << " is not in the facts table: " << facts;
    EXPECT_GT(at, static_cast<int64_t>(facts.size())) << "recall must come after the table";
  }
}

// Filler sentences between questions lie in [min_filler, filler]: the default
// (min 1) never puts two questions side by side; min 0 does, and keeps some filler.
TEST(Synthetic, FillerBetweenQuestionsWithinItsBounds) {
  auto gaps = [](const SyntheticSpec& spec) {
    std::map<int64_t, int64_t> count;  // sentences between consecutive questions -> how often
    for (int64_t d = 0; d < 20; ++d) {
      const std::string t = synthetic_document(spec, 3, d).text;
      size_t at = t.find("ask ", t.find('\n'));
      while (at != std::string::npos) {
        const size_t next = t.find("ask ", at + 1);
        if (next == std::string::npos) break;
        const std::string between = t.substr(at + 12, next - at - 12);  // after "ask kkkddd. "
        count[static_cast<int64_t>(std::count(between.begin(), between.end(), '.'))] += 1;
        at = next;
      }
    }
    return count;
  };
  const auto dflt = gaps(SyntheticSpec{4, 12, 2});
  EXPECT_EQ(dflt.count(0), 0u);
  EXPECT_GT(dflt.at(1), 0);
  EXPECT_GT(dflt.at(2), 0);
  EXPECT_EQ(dflt.rbegin()->first, 2);
  const auto dense = gaps(SyntheticSpec{4, 12, 1, 0});
  EXPECT_GT(dense.at(0), 40);  // about half of 220 gaps
  EXPECT_GT(dense.at(1), 40);
  EXPECT_EQ(dense.size(), 2u);
  EXPECT_NE(recipe_error_of({"data.synthetic.filler=1", "data.synthetic.min_filler=2"}).find("min_filler"),
            std::string::npos);
}

TEST(Dataset, StreamsMarksAndSeparators) {
  DataConfig cfg;
  cfg.synthetic.train_docs = 5;
  cfg.synthetic.val_docs = 2;
  ByteTokenizer tok;
  Corpus c = build_corpus(cfg, tok);
  EXPECT_EQ(c.train.num_docs(), 5);
  EXPECT_EQ(c.val.num_docs(), 2);
  ASSERT_EQ(c.train.long_range.size(), c.train.tokens.size());
  int64_t marked = 0;
  for (size_t i = 0; i < c.train.tokens.size(); ++i) {
    if (c.train.long_range[i]) {
      ++marked;
      EXPECT_TRUE(c.train.tokens[i] >= '0' && c.train.tokens[i] <= '9');
    }
  }
  EXPECT_EQ(marked, 5 * cfg.synthetic.recalls * 3);
  for (int64_t d = 0; d < c.train.num_docs(); ++d) EXPECT_EQ(c.train.tokens[c.train.doc_end(d)], tok.eos());
  EXPECT_EQ(c.train.tokens[c.train.doc_starts[0]], 'f');  // "facts:"
}

TEST(TextCorpus, SingleFileHoldsOutTheTail) {
  const auto dir = fs::temp_directory_path() / "longtrain_text1";
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; i < 100; ++i) text += "line " + std::to_string(i) + "\n";
  std::ofstream(dir / "a.txt") << text;
  TextSplit s = read_text_corpus({(dir / "a.txt").string()}, 0.1);
  ASSERT_EQ(s.train.size(), 1u);
  ASSERT_EQ(s.val.size(), 1u);
  EXPECT_EQ(s.train[0] + s.val[0], text);
  EXPECT_EQ(s.val[0].rfind("line ", 0), 0u) << "the cut is at a line break";
}

TEST(TextCorpus, DirectoryIsSplitByDocument) {
  const auto dir = fs::temp_directory_path() / "longtrain_text2";
  remove_tree(dir.string());
  fs::create_directories(dir / "sub");
  for (int i = 0; i < 10; ++i) std::ofstream(dir / "sub" / ("d" + std::to_string(i) + ".txt")) << "doc " << i;
  TextSplit s = read_text_corpus({dir.string()}, 0.2);
  EXPECT_EQ(s.files.size(), 10u);
  EXPECT_EQ(s.val.size(), 2u);
  EXPECT_EQ(s.train.size(), 8u);
}

TEST(TextCorpus, ClearErrors) {
  try {
    read_text_corpus({"/nonexistent/corpus.txt"}, 0.1);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/corpus.txt: no such file"), std::string::npos);
  }
  const auto empty = fs::temp_directory_path() / "longtrain_empty.txt";
  std::ofstream(empty).close();
  try {
    read_text_corpus({empty.string()}, 0.1);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos);
  }
}

TEST(Sampler, PureFunctionOfSeedStepMicroRank) {
  DataConfig cfg;
  cfg.synthetic.train_docs = 50;
  ByteTokenizer tok;
  Corpus c = build_corpus(cfg, tok);
  WindowSampler a(c.train, 32, 1), b(c.train, 32, 1), other_seed(c.train, 32, 2), rank1(c.train, 32, 1, 1);
  auto x = a.batch(5, 0, 4);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{4, 33}));
  EXPECT_TRUE(x.equal(b.batch(5, 0, 4)));
  a.batch(6, 0, 4);  // drawing other batches changes nothing
  EXPECT_TRUE(x.equal(a.batch(5, 0, 4)));
  EXPECT_FALSE(x.equal(a.batch(6, 0, 4)));
  EXPECT_FALSE(x.equal(a.batch(5, 1, 4)));
  EXPECT_FALSE(x.equal(other_seed.batch(5, 0, 4)));
  EXPECT_FALSE(x.equal(rank1.batch(5, 0, 4)));
  // Each row is a contiguous window of the stream.
  const auto row = x[2];
  bool found = false;
  for (size_t s = 0; s + 33 <= c.train.tokens.size() && !found; ++s) {
    bool same = true;
    for (int64_t i = 0; i < 33 && same; ++i) same = c.train.tokens[s + i] == row[i].item<int64_t>();
    found = same;
  }
  EXPECT_TRUE(found);
}

TEST(Sampler, DocumentModeStartsAtDocumentStarts) {
  DataConfig cfg;
  cfg.synthetic.train_docs = 50;
  ByteTokenizer tok;
  Corpus c = build_corpus(cfg, tok);
  WindowSampler s(c.train, 40, 3, 0, parse_window_start("document"));
  auto x = s.batch(0, 0, 16);
  for (int64_t r = 0; r < 16; ++r) {
    std::string head;
    for (int64_t i = 0; i < 6; ++i) head.push_back(static_cast<char>(x[r][i].item<int64_t>()));
    EXPECT_EQ(head, "facts:") << "row " << r;
  }
  EXPECT_THROW(parse_window_start("middle"), std::invalid_argument);
}

TEST(Sampler, TooShortStreamIsAnError) {
  TokenStream s;
  s.tokens = {1, 2, 3};
  EXPECT_THROW(WindowSampler(s, 8, 0), std::runtime_error);
}

TEST(ByteTokenizer, RoundTrip) {
  ByteTokenizer tok;
  const std::string text = "h\xc3\xa9llo\n\tworld";
  auto ids = tok.encode(text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.vocab_size(), 258);
  EXPECT_EQ(tok.bytes_of(tok.eos()), 0);
  EXPECT_THROW(make_tokenizer("gpt2"), std::invalid_argument);
}

}  // namespace
}  // namespace longtrain
