// The `longtrain` binary as a user runs it: help, exit codes with one-line
// reasons, eval of a checkpoint, and SIGTERM leaving a loadable checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/trainer/cli_run.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/checkpoint.h"

namespace longtrain {
namespace fs = std::filesystem;
namespace {

TEST(Cli, HelpListsCommandsAndOptions) {
  CliRun r = run_cli("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("train"), std::string::npos);
  EXPECT_NE(r.out.find("eval"), std::string::npos);
  EXPECT_NE(r.out.find("launch"), std::string::npos);
  CliRun t = run_cli("train --help");
  EXPECT_EQ(t.code, 0);
  for (const char* opt : {"--set", "--resume", "--stop-after"}) EXPECT_NE(t.out.find(opt), std::string::npos) << opt;
}

TEST(Cli, BadRecipeIsOneLineAndNonZero) {
  const auto f = fs::temp_directory_path() / "longtrain_cli_bad.yaml";
  std::ofstream(f) << "model:\n  d_modle: 3\n";
  CliRun r = run_cli("train " + f.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out.rfind("longtrain: error: " + f.string() + ":2: unknown key 'd_modle'", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_EQ(run_cli("frobnicate").code, 2);
}

TEST(Cli, TrainThenEval) {
  const auto dir = fresh_run_dir("cli_eval");
  CliRun t = run_cli("train " + std::string(LONGTRAIN_SOURCE_DIR) + "/recipes/tiny.yaml" +
              set_args(tiny_overrides(dir)) + " --set train.steps=6");
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("summary: val loss"), std::string::npos);
  const auto json_path = dir + "/eval.json";
  CliRun e = run_cli("eval " + dir + "/checkpoints/step-00000006 --json " + json_path);
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_NE(e.out.find("bits per byte"), std::string::npos);
  EXPECT_NE(e.out.find("long-range"), std::string::npos);
  EXPECT_TRUE(fs::exists(json_path));
  CliRun missing = run_cli("eval " + dir + "/checkpoints/step-99999999");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("not a checkpoint directory"), std::string::npos) << missing.out;
}

TEST(Cli, SigtermLeavesALoadableCheckpoint) {
  const auto dir = fresh_run_dir("cli_sigterm");
  auto sets = tiny_overrides(dir);
  sets.push_back("train.steps=100000");
  sets.push_back("checkpoint.every=0");
  std::vector<std::string> argv_s = {LONGTRAIN_BINARY, "train", std::string(LONGTRAIN_SOURCE_DIR) + "/recipes/tiny.yaml"};
  for (const auto& s : sets) {
    argv_s.push_back("--set");
    argv_s.push_back(s);
  }
  const pid_t pid = spawn_quiet(argv_s);
  ASSERT_GE(pid, 0);
  // Wait until training has logged a few steps, then ask it to stop.
  const auto metrics = fs::path(dir) / "metrics.jsonl";
  for (int i = 0; i < 600; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream in(metrics);
    int lines = 0;
    for (std::string l; std::getline(in, l);) ++lines;
    if (lines >= 4) break;
  }
  const int status = terminate_and_wait(pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto ckpts = list_checkpoints(dir);
  ASSERT_EQ(ckpts.size(), 1u);
  verify_checkpoint(ckpts[0]);
  CliRun e = run_cli("eval " + ckpts[0]);
  EXPECT_EQ(e.code, 0) << e.out;
}

}  // namespace
}  // namespace longtrain
