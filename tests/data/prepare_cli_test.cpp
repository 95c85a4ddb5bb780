// `longtrain prepare` as a user runs it, then `longtrain train` on its shards,
// byte-level and with a SentencePiece model trained by prepare.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "tests/data/corpus_files.h"
#include "tests/trainer/cli_run.h"
#include "tests/trainer/test_recipes.h"

namespace longtrain {
namespace fs = std::filesystem;
namespace {

std::string train_args(const std::string& run_dir, const std::string& shards) {
  std::string s = "train " + std::string(LONGTRAIN_SOURCE_DIR) + "/recipes/tiny.yaml";
  for (const auto& o : tiny_overrides(run_dir)) s += " --set " + o;
  return s + " --set data.source=shards --set 'data.paths=[" + shards + "]' --set data.window_start=inside" +
         " --set train.steps=3 --set checkpoint.every=0";
}

std::string corpus(const std::string& root) {
  for (int i = 0; i < 10; ++i)
    write_file(root + "/in/part" + std::to_string(i % 2) + "/" + std::to_string(i) + ".txt",
               generated_text(i, 10 + i));
  return root + "/in";
}

TEST(PrepareCli, PrepareThenTrainOnBytes) {
  const auto root = fresh_dir("cli_prep_bytes");
  const auto in = corpus(root);
  const CliRun p =
      run_cli("prepare " + in + " --out " + root + "/shards --tokenizer bytes --val-fraction 0.2");
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("docs/s"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("MB/s"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("train: 1 shards, 8 documents"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("val:   1 shards, 2 documents"), std::string::npos) << p.out;
  EXPECT_TRUE(fs::exists(root + "/shards/meta.json"));
  const auto run_dir = fresh_run_dir("cli_prep_bytes_run");
  const CliRun t = run_cli(train_args(run_dir, root + "/shards"));
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("data: token shards " + root + "/shards (bytes)"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("summary: val loss"), std::string::npos) << t.out;
  EXPECT_TRUE(fs::exists(run_dir + "/checkpoints/step-00000003"));
}

TEST(PrepareCli, PrepareThenTrainOnSentencePiece) {
  const auto root = fresh_dir("cli_prep_spm");
  const auto in = corpus(root);
  const CliRun p = run_cli("prepare " + in + " --out " + root +
                              "/shards --tokenizer train-spm:300 --spm-type unigram");
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_TRUE(fs::exists(root + "/shards/tokenizer.model"));
  const auto run_dir = fresh_run_dir("cli_prep_spm_run");
  const CliRun t = run_cli(train_args(run_dir, root + "/shards"));
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("spm:" + root + "/shards/tokenizer.model"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("vocab_size: 300"), std::string::npos) << t.out;
  // The checkpoint's recipe names the shards' tokenizer, so eval needs nothing more.
  const CliRun e = run_cli("eval " + run_dir + "/checkpoints/step-00000003");
  EXPECT_EQ(e.code, 0) << e.out;
}

TEST(PrepareCli, UsageAndErrors) {
  const CliRun help = run_cli("prepare --help");
  EXPECT_EQ(help.code, 0);
  for (const char* opt :
       {"--out", "--tokenizer", "--spm-type", "--val-fraction", "--shard-tokens", "train-spm:VOCAB"}) {
    EXPECT_NE(help.out.find(opt), std::string::npos) << opt;
  }
  const auto root = fresh_dir("cli_prep_err");
  EXPECT_EQ(run_cli("prepare " + root + " --out " + root + "/o --spm-type wordpiece").code, 2);
  const CliRun missing = run_cli("prepare " + root + "/nope.txt --out " + root + "/o");
  EXPECT_EQ(missing.code, 1);
  EXPECT_EQ(missing.out, "longtrain: error: " + root + "/nope.txt: no such file or directory\n");
}

}  // namespace
}  // namespace longtrain
