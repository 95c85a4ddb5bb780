// Checkpoints: complete ones verify; a truncated file, a flipped byte or a
// missing manifest is detected; `--resume auto` falls back to the previous
// complete checkpoint and says so; keep_last prunes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/trainer/test_recipes.h"
#include "trainer/checkpoint.h"
#include "trainer/checksum.h"
#include "trainer/loop.h"

namespace longtrain {
namespace fs = std::filesystem;
namespace {

std::string expect_rejected(const std::string& dir) {
  try {
    verify_checkpoint(dir);
  } catch (const CheckpointError& e) {
    return e.what();
  }
  ADD_FAILURE() << dir << " was accepted";
  return "";
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_ = fresh_run_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    TrainOptions opt;
    opt.print_recipe = false;
    train(tiny_recipe(run_, {"train.steps=8", "checkpoint.every=4"}), opt);
    newest_ = run_ + "/checkpoints/step-00000008";
    older_ = run_ + "/checkpoints/step-00000004";
  }
  std::string run_, newest_, older_;
};

TEST_F(CheckpointTest, CompleteCheckpointsVerify) {
  EXPECT_EQ(list_checkpoints(run_), (std::vector<std::string>{newest_, older_}));
  verify_checkpoint(newest_);
  verify_checkpoint(older_);
  for (const char* f : {"model.pt", "optimizer.pt", "rng.pt", "state.json", "recipe.yaml", "manifest.json"}) {
    EXPECT_TRUE(fs::exists(fs::path(newest_) / f)) << f;
  }
}

TEST_F(CheckpointTest, TruncatedFileDetected) {
  const auto p = fs::path(newest_) / "model.pt";
  fs::resize_file(p, fs::file_size(p) / 2);
  EXPECT_NE(expect_rejected(newest_).find("truncated"), std::string::npos);
}

TEST_F(CheckpointTest, FlippedByteDetected) {
  const auto p = fs::path(newest_) / "optimizer.pt";
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(fs::file_size(p) / 2));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(fs::file_size(p) / 2));
  f.write(&c, 1);
  f.close();
  EXPECT_NE(expect_rejected(newest_).find("checksum mismatch"), std::string::npos);
}

TEST_F(CheckpointTest, MissingManifestDetected) {
  fs::remove(fs::path(newest_) / "manifest.json");
  EXPECT_NE(expect_rejected(newest_).find("manifest.json is missing"), std::string::npos);
}

TEST_F(CheckpointTest, ResumeAutoFallsBackToPreviousComplete) {
  fs::resize_file(fs::path(newest_) / "model.pt", 10);
  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_checkpoint(run_, [&](const std::string& w) { warnings.push_back(w); }), older_);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("falling back"), std::string::npos);

  TrainOptions opt;
  opt.print_recipe = false;
  opt.resume = "auto";
  TrainResult r = train(tiny_recipe(run_, {"train.steps=10", "checkpoint.every=4"}), opt);
  EXPECT_EQ(r.step, 10);
  EXPECT_FALSE(r.has_before) << "resumed from step 4, not from scratch";
}

TEST_F(CheckpointTest, KeepLastPrunes) {
  TrainOptions opt;
  opt.print_recipe = false;
  opt.resume = "auto";
  train(tiny_recipe(run_, {"train.steps=16", "checkpoint.every=2", "checkpoint.keep_last=2"}), opt);
  EXPECT_EQ(list_checkpoints(run_), (std::vector<std::string>{run_ + "/checkpoints/step-00000016",
                                                              run_ + "/checkpoints/step-00000014"}));
}

TEST(Checksum, SensitiveToEveryByteAndLength) {
  std::string a(1000, 'x');
  const uint64_t base = checksum_bytes(a.data(), a.size());
  for (size_t i : {0u, 7u, 8u, 500u, 999u}) {
    std::string b = a;
    b[i] ^= 1;
    EXPECT_NE(checksum_bytes(b.data(), b.size()), base) << i;
  }
  EXPECT_NE(checksum_bytes(a.data(), 992), base);
  EXPECT_NE(checksum_bytes(a.data(), 999), base);
  EXPECT_EQ(checksum_bytes(a.data(), a.size()), base);
}

}  // namespace
}  // namespace longtrain
