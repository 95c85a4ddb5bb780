// `longtrain prepare` and the shards data source: prepared shards hold exactly
// the documents data/text_corpus would train and validate on (text files,
// directories, JSONL), byte-level or SentencePiece; the output does not depend
// on the thread count; errors name the file; a recipe whose tokenizer differs
// from the shards' is refused.
#include "data/prepare.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>

#include "data/dataset.h"
#include "data/spm_tokenizer.h"
#include "data/text_corpus.h"
#include "data/tokenizer.h"
#include "tests/data/corpus_files.h"
#include "trainer/config.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace fs = std::filesystem;
namespace {

PrepareOptions options(const std::string& in, const std::string& out,
                       const std::string& tokenizer = "bytes") {
  PrepareOptions o;
  o.inputs = {in};
  o.out_dir = out;
  o.tokenizer = tokenizer;
  o.progress = false;
  return o;
}

Corpus load_shards(const std::string& dir, const Tokenizer& tok) {
  DataConfig cfg;
  cfg.source = "shards";
  cfg.paths = {dir};
  return build_corpus(cfg, tok);
}

// Each document of the stream decoded (its <eos> excluded, and checked).
std::vector<std::string> documents_of(const TokenStream& s, const Tokenizer& tok) {
  std::vector<std::string> out;
  for (int64_t d = 0; d < s.num_docs(); ++d) {
    EXPECT_EQ(s.tokens[s.doc_end(d)], tok.eos()) << "document " << d << " does not end in <eos>";
    out.push_back(tok.decode({s.tokens.begin() + s.doc_starts[d], s.tokens.begin() + s.doc_end(d)}));
  }
  return out;
}

// The error message of `f()`, or "" when it does not throw.
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// 11 non-empty documents in nested directories, plus an empty file that is skipped.
std::string nested_corpus(const std::string& root) {
  const std::string in = root + "/in";
  for (int i = 0; i < 11; ++i) {
    const std::string sub = i % 3 == 0 ? "/a" : (i % 3 == 1 ? "/a/deep/er" : "/b");
    write_file(in + sub + "/doc" + std::to_string(i) + ".txt", generated_text(100 + i, 3 + i));
  }
  write_file(in + "/b/empty.txt", "");
  return in;
}

TEST(Prepare, BytesShardsHoldTheTextCorpusSplit) {
  const auto root = fresh_dir("prep_bytes");
  const auto in = nested_corpus(root);
  auto o = options(in, root + "/out");
  o.val_fraction = 0.2;
  const PrepareResult r = prepare(o);
  EXPECT_EQ(r.meta.tokenizer, "bytes");
  EXPECT_EQ(r.meta.vocab_size, 258);
  EXPECT_EQ(r.meta.token_width, 2);
  EXPECT_EQ(r.meta.input_files, 12);
  const TextSplit expected = read_text_corpus({in}, 0.2);
  EXPECT_EQ(r.meta.train.documents, static_cast<int64_t>(expected.train.size()));
  EXPECT_EQ(r.meta.val.documents, static_cast<int64_t>(expected.val.size()));
  EXPECT_EQ(expected.val.size(), 2u);
  ByteTokenizer tok;
  const Corpus c = load_shards(root + "/out", tok);
  EXPECT_EQ(documents_of(c.train, tok), expected.train);
  EXPECT_EQ(documents_of(c.val, tok), expected.val);
  EXPECT_TRUE(c.train.long_range.empty());
  EXPECT_NE(c.description.find("token shards"), std::string::npos);
}

TEST(Prepare, SingleFileHoldsOutItsTail) {
  const auto root = fresh_dir("prep_single");
  const std::string text = generated_text(1, 200);
  write_file(root + "/enwik.txt", text);
  auto o = options(root + "/enwik.txt", root + "/out");
  o.val_fraction = 0.1;
  o.shard_tokens = 100;  // the lone training document is longer: it gets a shard of its own
  const PrepareResult r = prepare(o);
  EXPECT_EQ(r.meta.train.shards, (std::vector<std::string>{"train-00000.bin"}));
  ByteTokenizer tok;
  const Corpus c = load_shards(root + "/out", tok);
  const auto train = documents_of(c.train, tok), val = documents_of(c.val, tok);
  ASSERT_EQ(train.size(), 1u);
  ASSERT_EQ(val.size(), 1u);
  EXPECT_EQ(train[0] + val[0], text);
  EXPECT_EQ(train[0].back(), '\n') << "the cut is at a line break";
  EXPECT_NEAR(static_cast<double>(val[0].size()) / text.size(), 0.1, 0.02);
}

TEST(Prepare, JsonlDocumentsInFilesAndDirectories) {
  const auto root = fresh_dir("prep_jsonl");
  write_file(root + "/in/a.jsonl",
             "{\"text\": \"alpha\\nbeta\"}\n\n{\"id\": 7, \"text\": \"\"}\r\n{\"text\": \"gamma \\u00e9\", "
             "\"x\": [1]}\n"
             "{\"text\": \"delta\"}\n");
  write_file(root + "/in/b.txt", "plain file\n");
  write_file(root + "/in/c/d.jsonl", "{\"text\": \"epsilon\"}\n{\"text\": \"zeta\"}");
  auto o = options(root + "/in", root + "/out");
  o.val_fraction = 0.3;
  prepare(o);
  ByteTokenizer tok;
  const Corpus c = load_shards(root + "/out", tok);
  // Files in sorted order, lines in order, blank lines and empty texts
  // skipped; held out: document 3 alone (floor((i+1) 0.3) > floor(i 0.3)).
  const auto train = documents_of(c.train, tok), val = documents_of(c.val, tok);
  EXPECT_EQ(train, (std::vector<std::string>{"alpha\nbeta", "gamma \xc3\xa9", "delta", "epsilon", "zeta"}));
  EXPECT_EQ(val, (std::vector<std::string>{"plain file\n"}));

  write_file(root + "/bad/x.jsonl", "{\"text\": \"ok\"}\n{\"text\": 3}\n");
  EXPECT_NE(error_of([&] {
              prepare(options(root + "/bad", root + "/out2"));
            }).find(root + "/bad/x.jsonl:2: expected a JSON object with a string field \"text\""),
            std::string::npos);
  write_file(root + "/bad/x.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  EXPECT_NE(error_of([&] {
              prepare(options(root + "/bad", root + "/out2"));
            }).find(root + "/bad/x.jsonl:2: invalid JSON"),
            std::string::npos);
}

TEST(Prepare, ShardsRollOverAndStaleOnesGo) {
  const auto root = fresh_dir("prep_roll");
  for (int i = 0; i < 30; ++i)
    write_file(root + "/in/" + std::to_string(100 + i) + ".txt", generated_text(i, 4));
  auto o = options(root + "/in", root + "/out");
  o.shard_tokens = 400;
  const PrepareResult r = prepare(o);
  ASSERT_GT(r.meta.train.shards.size(), 3u);
  int64_t docs = 0;
  for (const auto& name : r.meta.train.shards) {
    ShardReader s(root + "/out/" + name);
    EXPECT_LE(s.num_tokens(), 400) << name;
    EXPECT_EQ(s.token(s.num_tokens() - 1), ByteTokenizer::kEos) << name << " ends mid-document";
    docs += s.num_docs();
  }
  EXPECT_EQ(docs, r.meta.train.documents);
  o.shard_tokens = 1000000;
  prepare(o);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(root + "/out")) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"meta.json", "train-00000.bin", "val-00000.bin"}));
}

TEST(Prepare, OutputDoesNotDependOnThreads) {
  const auto root = fresh_dir("prep_threads");
  // A 2.5 MB document is tokenized in line-aligned pieces, in parallel.
  write_file(root + "/in/long.txt", generated_text(5, 60000));
  for (int i = 0; i < 40; ++i) write_file(root + "/in/s" + std::to_string(i) + ".txt", generated_text(i, 5));
  auto o = options(root + "/in", root + "/one");
  o.threads = 1;
  const PrepareResult one = prepare(o);
  o.out_dir = root + "/four";
  o.threads = 4;
  prepare(o);
  for (const auto& name : one.meta.train.shards) {
    EXPECT_EQ(read_file(root + "/one/" + name), read_file(root + "/four/" + name)) << name;
  }
  EXPECT_EQ(read_file(root + "/one/meta.json"), read_file(root + "/four/meta.json"));
  ByteTokenizer tok;
  EXPECT_EQ(documents_of(load_shards(root + "/four", tok).train, tok)[0], read_file(root + "/in/long.txt"));
}

TEST(Prepare, ErrorsNameTheFile) {
  const auto root = fresh_dir("prep_errors");
  EXPECT_NE(error_of([&] {
              prepare(options(root + "/missing.txt", root + "/out"));
            }).find(root + "/missing.txt: no such file or directory"),
            std::string::npos);
  write_file(root + "/empty/a.txt", "");
  write_file(root + "/empty/b/c.jsonl", "\n{\"text\": \"\"}\n");
  const std::string empty = error_of([&] { prepare(options(root + "/empty", root + "/out")); });
  EXPECT_NE(empty.find(root + "/empty: no documents to prepare"), std::string::npos) << empty;
  write_file(root + "/tiny.txt", "x");
  EXPECT_NE(error_of([&] {
              prepare(options(root + "/tiny.txt", root + "/out"));
            }).find(root + "/tiny.txt: too small to split"),
            std::string::npos);
  write_file(root + "/ok.txt", generated_text(1, 50));
  EXPECT_NE(
      error_of([&] { prepare(options(root + "/ok.txt", root + "/out", "gpt2")); }).find("train-spm:VOCAB"),
      std::string::npos);
  EXPECT_NE(error_of([&] {
              prepare(options(root + "/ok.txt", root + "/out", "train-spm:lots"));
            }).find("VOCAB > 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              prepare(options(root + "/ok.txt", root + "/out", "spm:" + root + "/none.model"));
            }).find(root + "/none.model: no such"),
            std::string::npos);
  auto o = options(root + "/ok.txt", root + "/out");
  o.val_fraction = 1.5;
  EXPECT_THROW(prepare(o), std::invalid_argument);
}

TEST(Prepare, SentencePieceShardsRoundTrip) {
  const auto root = fresh_dir("prep_spm");
  for (int i = 0; i < 8; ++i) write_file(root + "/in/" + std::to_string(i) + ".txt", generated_text(i, 60));
  write_file(root + "/in/odd.txt", "tabs\tand  double spaces\n\n caf\xc3\xa9 \xf0\x9f\x99\x82 end");
  auto o = options(root + "/in", root + "/out", "train-spm:300");
  o.val_fraction = 0.25;
  const PrepareResult r = prepare(o);
  EXPECT_EQ(r.meta.tokenizer, "spm");
  EXPECT_EQ(r.meta.spm_type, "bpe");
  EXPECT_EQ(r.meta.vocab_size, 300);
  ASSERT_TRUE(fs::exists(root + "/out/tokenizer.model"));
  const auto tok = make_tokenizer(shard_tokenizer_spec(r.meta, root + "/out"));
  EXPECT_EQ(tok->name(), "spm:" + root + "/out/tokenizer.model");
  const Corpus c = load_shards(root + "/out", *tok);
  const TextSplit expected = read_text_corpus({root + "/in"}, 0.25);
  EXPECT_EQ(documents_of(c.train, *tok), expected.train);
  EXPECT_EQ(documents_of(c.val, *tok), expected.val);
  int64_t bytes = 0;
  for (int32_t id : c.train.tokens) bytes += tok->bytes_of(id);
  EXPECT_EQ(bytes, r.meta.train.text_bytes) << "bytes_of must add up to the text (bits per byte)";
  EXPECT_LT(r.meta.train.tokens, r.meta.train.text_bytes * 4 / 5) << "the vocabulary should compress the text";
}

TEST(Spm, TrainedModelRoundTripsExactly) {
  const auto root = fresh_dir("spm_train");
  const std::string corpus = generated_text(3, 400);
  auto train = [&](const std::string& type) {
    bool given = false;
    return train_spm({300, type}, [&](std::string& doc) {
      if (given) return false;
      doc = corpus;
      given = true;
      return true;
    });
  };
  for (const std::string type : {"bpe", "unigram"}) {
    const std::string model = train(type);
    EXPECT_EQ(model, train(type)) << type << ": training is not deterministic";
    write_file(root + "/" + type + ".model", model);
    const auto tok = make_tokenizer("spm:" + root + "/" + type + ".model");
    EXPECT_EQ(tok->vocab_size(), 300);
    EXPECT_TRUE(tok->encodes_lines_independently());
    const std::string text = "the  quiet\tfox\n\n walks caf\xc3\xa9 \xf0\x9f\x99\x82.\n";
    const auto ids = tok->encode(text);
    EXPECT_EQ(tok->decode(ids), text) << type;
    int64_t bytes = 0;
    for (int32_t id : ids) bytes += tok->bytes_of(id);
    EXPECT_EQ(bytes, static_cast<int64_t>(text.size())) << type;
    EXPECT_EQ(tok->bytes_of(tok->eos()), 0);
    EXPECT_EQ(tok->encode("\xf0\x9f\x99\x82").size(), 4u) << "an unseen emoji falls back to 4 byte pieces";
    EXPECT_EQ(tok->bytes_of(tok->encode("\xf0\x9f\x99\x82")[0]), 1);
    EXPECT_LT(tok->encode(corpus).size(), corpus.size() * 4 / 5);
    // What lets prepare encode long documents in line-aligned pieces.
    const size_t cut = corpus.find('\n', corpus.size() / 2) + 1;
    auto pieces = tok->encode(corpus.substr(0, cut));
    const auto rest = tok->encode(corpus.substr(cut));
    pieces.insert(pieces.end(), rest.begin(), rest.end());
    EXPECT_EQ(pieces, tok->encode(corpus)) << type;
  }
  EXPECT_THROW(train_spm({300, "wordpiece"}, [](std::string&) { return false; }), std::invalid_argument);
}

TEST(Spm, BadModelFilesAreNamed) {
  const auto root = fresh_dir("spm_bad");
  EXPECT_NE(error_of([&] { make_tokenizer("spm:" + root + "/none.model"); }).find(root + "/none.model"),
            std::string::npos);
  write_file(root + "/text.model", "not a model");
  EXPECT_NE(error_of([&] {
              make_tokenizer("spm:" + root + "/text.model");
            }).find(root + "/text.model: cannot load"),
            std::string::npos);
  const std::string unknown = error_of([&] { make_tokenizer("gpt2"); });
  EXPECT_NE(unknown.find("valid: bytes, spm:PATH"), std::string::npos) << unknown;
}

// SentencePiece shards in `root`/spm (trained) with a copy of the model beside them.
std::string spm_shards(const std::string& root) {
  write_file(root + "/in/a.txt", generated_text(1, 80));
  write_file(root + "/in/b.txt", generated_text(2, 80));
  prepare(options(root + "/in", root + "/spm", "train-spm:290"));
  write_file(root + "/copy.model", read_file(root + "/spm/tokenizer.model"));
  return root + "/spm";
}

TEST(ShardsRecipe, TokenizerComesFromTheShards) {
  const auto root = fresh_dir("recipe_tok");
  const auto dir = spm_shards(root);
  Recipe r = load_recipe("", {"data.source=shards", "data.paths=[" + dir + "]"});
  EXPECT_EQ(r.data.tokenizer, "spm:" + dir + "/tokenizer.model");
  EXPECT_EQ(r.resolved["data"]["tokenizer"].as<std::string>(), r.data.tokenizer);
  // The same model under another name is the same tokenizer.
  EXPECT_NO_THROW(load_recipe(
      "", {"data.source=shards", "data.paths=[" + dir + "]", "data.tokenizer=spm:" + root + "/copy.model"}));
  const auto tok = make_tokenizer(r.data.tokenizer);
  EXPECT_EQ(load_shards(dir, *tok).train.num_docs(), 1);
}

TEST(ShardsRecipe, TokenizerMismatchIsARecipeError) {
  const auto root = fresh_dir("recipe_mismatch");
  const auto dir = spm_shards(root);
  const std::string recipe = root + "/r.yaml";
  write_file(recipe, "data:\n  source: shards\n  paths: [" + dir + "]\n  tokenizer: bytes\n");
  std::string err = error_of([&] { load_recipe(recipe); });
  EXPECT_EQ(err.rfind(recipe + ":4: data.tokenizer: tokenizer 'bytes' does not match the shards: " + dir +
                          "/meta.json says they were made with SentencePiece",
                      0),
            0u)
      << err;
  // Another SentencePiece model.
  write_file(root + "/in2/c.txt", generated_text(9, 90));
  prepare(options(root + "/in2", root + "/other", "train-spm:320"));
  err = error_of([&] {
    load_recipe("", {"data.source=shards", "data.paths=[" + dir + "]",
                     "data.tokenizer=spm:" + root + "/other/tokenizer.model"});
  });
  EXPECT_NE(err.find("is a different model"), std::string::npos) << err;
  // Byte shards, SentencePiece recipe; and the corpus builder checks on its own.
  prepare(options(root + "/in", root + "/bytes"));
  err = error_of([&] {
    load_recipe("", {"data.source=shards", "data.paths=[" + root + "/bytes]",
                     "data.tokenizer=spm:" + root + "/copy.model"});
  });
  EXPECT_NE(err.find(root + "/bytes/meta.json says they were made with 'bytes'"), std::string::npos) << err;
  const auto spm = make_tokenizer("spm:" + root + "/copy.model");
  err = error_of([&] { load_shards(root + "/bytes", *spm); });
  EXPECT_NE(err.find("made with 'bytes'"), std::string::npos) << err;
}

TEST(ShardsRecipe, MissingOrDamagedShardsAreNamed) {
  const auto root = fresh_dir("recipe_damage");
  fs::create_directories(root + "/nothing");
  std::string err = error_of([&] {
    load_recipe("", {"data.source=shards", "data.paths=[" + root + "/nothing]"});
  });
  EXPECT_NE(err.find("data.paths: " + root + "/nothing/meta.json: cannot open"), std::string::npos) << err;
  err = error_of([&] { load_recipe("", {"data.source=shards", "data.paths=[a, b]"}); });
  EXPECT_NE(err.find("exactly one directory"), std::string::npos) << err;

  write_file(root + "/in/a.txt", generated_text(1, 40));
  write_file(root + "/in/b.txt", generated_text(2, 40));
  prepare(options(root + "/in", root + "/out"));
  const std::string shard = root + "/out/train-00000.bin";
  std::string bytes = read_file(shard);
  bytes[100] = static_cast<char>(bytes[100] ^ 0x20);
  write_file(shard, bytes);
  ByteTokenizer tok;
  err = error_of([&] { load_shards(root + "/out", tok); });
  EXPECT_NE(err.find(shard + ": checksum mismatch"), std::string::npos) << err;
}

}  // namespace
}  // namespace longtrain
