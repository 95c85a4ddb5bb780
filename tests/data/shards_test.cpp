// Shard format: what is written reads back exactly, in the narrowest token
// width; every kind of damage (a flipped byte, truncation, wrong magic or
// version, an id outside the vocabulary, a broken document index) is refused
// on open with an error naming the file.
#include "data/shards.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "tests/data/corpus_files.h"
#include "trainer/checksum.h"

namespace longtrain {
namespace fs = std::filesystem;
namespace {

const std::vector<std::vector<int32_t>> kDocs = {{5, 6, 7, 256}, {1, 256}, {0, 255, 255, 200, 256}};

std::string write_sample(const std::string& dir, int64_t vocab = 258,
                         const std::vector<std::vector<int32_t>>& docs = kDocs) {
  const std::string path = dir + "/sample.bin";
  ShardWriter w(path, vocab);
  for (const auto& d : docs) w.add_document(d);
  w.finish();
  return path;
}

// The error opening `path`, or "" when it opens.
std::string open_error(const std::string& path) {
  try {
    ShardReader r(path);
  } catch (const ShardError& e) {
    return e.what();
  }
  return "";
}

void patch(const std::string& path, size_t offset, const void* bytes, size_t n) {
  std::string data = read_file(path);
  ASSERT_LE(offset + n, data.size());
  std::memcpy(data.data() + offset, bytes, n);
  write_file(path, data);
}

// Recomputes the header checksum as the format defines it, so a test can make
// a file whose only fault is the one it planted.
void reseal(const std::string& path) {
  std::string data = read_file(path);
  const uint64_t sum = checksum_bytes(data.data() + kShardHeaderBytes, data.size() - kShardHeaderBytes,
                                      checksum_bytes(data.data(), 40));
  std::memcpy(data.data() + 40, &sum, 8);
  write_file(path, data);
}

TEST(ShardFormat, RoundTripInSixteenBitTokens) {
  const auto dir = fresh_dir("shard_rt");
  const auto path = write_sample(dir);
  ShardReader r(path);
  EXPECT_EQ(r.token_width(), 2);
  EXPECT_EQ(r.vocab_size(), 258);
  ASSERT_EQ(r.num_docs(), 3);
  ASSERT_EQ(r.num_tokens(), 11);
  std::vector<int32_t> all;
  r.append_tokens(all);
  std::vector<int32_t> expected;
  for (const auto& d : kDocs) expected.insert(expected.end(), d.begin(), d.end());
  EXPECT_EQ(all, expected);
  EXPECT_EQ(std::vector<int64_t>(r.doc_starts(), r.doc_starts() + 3), (std::vector<int64_t>{0, 4, 6}));
  // 64-byte header, 11 tokens * 2 bytes padded to 24, three offsets.
  EXPECT_EQ(fs::file_size(path), 64u + 24u + 3u * 8u);
  EXPECT_EQ(read_file(path).substr(0, 8), std::string("LTSHARD\0", 8));
}

TEST(ShardFormat, LargeVocabularyUsesThirtyTwoBitTokens) {
  EXPECT_EQ(token_width_for(65536), 2);
  EXPECT_EQ(token_width_for(65537), 4);
  const auto dir = fresh_dir("shard_wide");
  const auto path = write_sample(dir, 100000, {{99999, 65536, 3}, {70000}});
  ShardReader r(path);
  EXPECT_EQ(r.token_width(), 4);
  EXPECT_EQ(r.token(0), 99999);
  EXPECT_EQ(r.token(1), 65536);
  EXPECT_EQ(r.token(3), 70000);
}

TEST(ShardFormat, WriterLeavesNoPartialFile) {
  const auto dir = fresh_dir("shard_atomic");
  const std::string path = dir + "/a.bin";
  ShardWriter w(path, 258);
  w.add_document({1, 2, 256});
  EXPECT_FALSE(fs::exists(path)) << "nothing is visible before finish()";
  w.finish();
  EXPECT_TRUE(fs::exists(path));
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) entries += e.path().filename() == "a.bin" ? 0 : 1;
  EXPECT_EQ(entries, 0) << "a temporary file was left behind";
  EXPECT_THROW(ShardWriter(dir + "/b.bin", 258).add_document({258}), ShardError);
  EXPECT_THROW(ShardWriter(dir + "/b.bin", 258).add_document({-1}), ShardError);
}

TEST(ShardFormat, FlippedByteIsDetected) {
  const auto dir = fresh_dir("shard_flip");
  const auto path = write_sample(dir);
  const std::string good = read_file(path);
  // Every byte after the checksum field (tokens, padding, offsets), and the
  // header fields the checksum is seeded with.
  for (size_t at : {size_t{70}, size_t{64 + 23}, good.size() - 3, size_t{20}, size_t{30}}) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    write_file(path, bad);
    const std::string err = open_error(path);
    EXPECT_EQ(err.rfind(path + ": ", 0), 0u) << "byte " << at << ": " << err;
    EXPECT_NE(err, "") << "byte " << at;
  }
  std::string bad = good;
  bad[70] = static_cast<char>(bad[70] ^ 0x01);
  write_file(path, bad);
  EXPECT_NE(open_error(path).find("checksum mismatch"), std::string::npos) << open_error(path);
}

TEST(ShardFormat, TruncationIsDetected) {
  const auto dir = fresh_dir("shard_trunc");
  const auto path = write_sample(dir);
  const std::string good = read_file(path);
  write_file(path, good.substr(0, good.size() - 8));
  EXPECT_NE(open_error(path).find("(truncated)"), std::string::npos) << open_error(path);
  write_file(path, good.substr(0, 10));
  EXPECT_NE(open_error(path).find("smaller than the 64-byte header"), std::string::npos) << open_error(path);
  write_file(path, good + "x");
  EXPECT_NE(open_error(path).find("trailing bytes"), std::string::npos) << open_error(path);
  EXPECT_NE(open_error(dir + "/missing.bin").find(dir + "/missing.bin: cannot open"), std::string::npos);
}

TEST(ShardFormat, WrongMagicAndVersionAreRefused) {
  const auto dir = fresh_dir("shard_magic");
  const auto path = write_sample(dir);
  patch(path, 0, "NOTSHARD", 8);
  EXPECT_NE(open_error(path).find("bad magic"), std::string::npos) << open_error(path);
  write_sample(dir);
  const uint32_t version = 99;
  patch(path, 8, &version, 4);
  reseal(path);
  EXPECT_NE(open_error(path).find("version 99"), std::string::npos) << open_error(path);
}

TEST(ShardFormat, TokenIdOutsideVocabularyIsDetected) {
  const auto dir = fresh_dir("shard_vocab");
  const auto path = write_sample(dir);
  // A shard claiming a smaller vocabulary than its ids, with a valid checksum.
  const uint64_t vocab = 200;
  patch(path, 16, &vocab, 8);
  reseal(path);
  const std::string err = open_error(path);
  EXPECT_NE(err.find("token 3 has id 256, outside the vocabulary [0, 200)"), std::string::npos) << err;
}

TEST(ShardFormat, BrokenDocumentIndexIsDetected) {
  const auto dir = fresh_dir("shard_index");
  const auto path = write_sample(dir);
  const int64_t backwards = 2;  // document 2 starting before document 1
  patch(path, 64 + 24 + 16, &backwards, 8);
  reseal(path);
  EXPECT_NE(open_error(path).find("document 2 starts at 2"), std::string::npos) << open_error(path);
}

}  // namespace
}  // namespace longtrain
