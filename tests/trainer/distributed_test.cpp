// Data parallelism on CPU (Gloo): the gradient reducer in-process over two
// threads, then the real binary under `longtrain launch --nproc 2`: it matches
// one process with the doubled batch, keeps the ranks' parameters identical,
// fails fast when a rank dies or hangs, stops all ranks with one checkpoint on
// a SIGTERM to one of them, and resumes a 2-rank checkpoint on 2 ranks or 1.
// Gradient accumulation and non-finite skips agree across ranks too.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "model/lm.h"
#include "tests/trainer/cli_run.h"
#include "tests/trainer/test_recipes.h"
#include "trainer/checkpoint.h"
#include "trainer/distributed.h"
#include "trainer/launch.h"

namespace longtrain {
namespace {

using Clock = std::chrono::steady_clock;

// Runs body(rank, dist) on two threads forming a Gloo group; returns the
// threads' error messages ("" when none).
std::vector<std::string> on_two_ranks(const std::function<void(int, Distributed&)>& body) {
  const int port = free_tcp_port();
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        DistEnv env;
        env.rank = rank;
        env.world_size = 2;
        env.master_port = port;
        Distributed dist(env, torch::kCPU, std::chrono::seconds(20));
        body(rank, dist);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

// Three leaf parameters (fixed values) and a loss of a rank's input.
std::vector<torch::Tensor> make_params() {
  return {torch::linspace(-1, 1, 32).reshape({8, 4}).requires_grad_(),
          torch::linspace(0.5, -0.5, 16).reshape({4, 4}).requires_grad_(),
          torch::linspace(0, 0.3, 4).requires_grad_()};
}
torch::Tensor rank_input(int rank) { return torch::linspace(-2.0 + rank, 1.0 + rank, 24).reshape({3, 8}); }
torch::Tensor loss_of(const std::vector<torch::Tensor>& p, const torch::Tensor& x) {
  return (torch::tanh(x.matmul(p[0])).matmul(p[1]) + p[2]).pow(2).sum();
}

TEST(DistributedReducer, SumsGradientsInBucketsLaunchedDuringBackward) {
  // Expected: the gradient of both ranks' losses, twice (two micro-batches).
  auto ref = make_params();
  (2 * (loss_of(ref, rank_input(0)) + loss_of(ref, rank_input(1)))).backward();

  std::vector<int64_t> buckets(2), overlapped(2);
  auto errors = on_two_ranks([&](int rank, Distributed& dist) {
    auto p = make_params();
    GradientReducer reducer(dist, p, /*bucket_bytes=*/64);  // 16 floats: one bucket per tensor
    for (int micro = 0; micro < 2; ++micro) {
      reducer.prepare_for_backward(micro == 1);
      loss_of(p, rank_input(rank)).backward();
    }
    reducer.finish();
    for (size_t i = 0; i < p.size(); ++i) {
      if (!torch::allclose(p[i].grad(), ref[i].grad(), 1e-5, 1e-6)) {
        throw std::runtime_error("rank " + std::to_string(rank) + ": gradient " + std::to_string(i) + " differs");
      }
    }
    buckets[static_cast<size_t>(rank)] = reducer.num_buckets();
    overlapped[static_cast<size_t>(rank)] = reducer.launched_in_backward();
  });
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(buckets[r], 3);
    EXPECT_EQ(overlapped[r], 3) << "buckets were not launched from the gradient hooks";
  }
}

TEST(DistributedReducer, BroadcastMakesReplicasEqualAndDifferencesAreCaught) {
  auto errors = on_two_ranks([&](int rank, Distributed& dist) {
    torch::nn::Linear lin(4, 3);
    {
      torch::NoGradGuard g;
      lin->weight.fill_(static_cast<double>(rank));  // ranks differ before the broadcast
    }
    broadcast_module(dist, *lin);
    if (lin->weight.abs().sum().item<double>() != 0.0) throw std::runtime_error("broadcast did not copy rank 0");
    check_same_on_all_ranks(dist, parameter_checksum(*lin), "parameters");
    check_same_on_all_ranks(dist, 7 + static_cast<uint64_t>(rank), "the test value");
  });
  for (const auto& e : errors) EXPECT_NE(e.find("the test value differs between ranks"), std::string::npos) << e;
}

TEST(DistributedEnv, ReadsTorchrunVariablesAndRejectsBadOnes) {
  auto set = [](const char* k, const char* v) { setenv(k, v, 1); };
  set("RANK", "3");
  set("WORLD_SIZE", "4");
  set("LOCAL_RANK", "1");
  set("LOCAL_WORLD_SIZE", "2");
  set("MASTER_ADDR", "node7");
  set("MASTER_PORT", "1234");
  DistEnv e = dist_env_from_environment();
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "node7");
  EXPECT_EQ(e.master_port, 1234);
  set("RANK", "4");
  EXPECT_THROW(dist_env_from_environment(), std::runtime_error);
  set("RANK", "x");
  EXPECT_THROW(dist_env_from_environment(), std::runtime_error);
  for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
    unsetenv(k);
  }
  EXPECT_FALSE(dist_env_from_environment().active());
}

// --- the binary under `longtrain launch` ---

std::string train_args(const std::string& dir, std::vector<std::string> extra) {
  auto sets = tiny_overrides(dir);
  sets.insert(sets.end(), {"train.device=cpu", "train.steps=6", "checkpoint.every=0"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  return "train " + std::string(LONGTRAIN_SOURCE_DIR) + "/recipes/tiny.yaml" + set_args(sets);
}

// A bound on every run, so a hang fails the test instead of stalling CI.
const std::string kTimeout = "timeout -k 5 120 ";

CliRun launch_two(const std::string& args, const std::string& env = "", const std::string& opts = "") {
  return run_cli("launch --nproc 2 " + opts + " -- " + args, env + kTimeout);
}

void expect_losses_close(const std::string& a, const std::string& b, size_t steps) {
  const auto la = logged_losses(a), lb = logged_losses(b);
  ASSERT_EQ(la.size(), steps) << a;
  ASSERT_EQ(lb.size(), steps) << b;
  // fp32 sums in a different order (per-rank means, then their mean).
  for (size_t i = 0; i < steps; ++i) EXPECT_NEAR(la[i], lb[i], 1e-5 * std::abs(la[i])) << "step " << i + 1;
}

std::map<std::string, torch::Tensor> checkpoint_params(const std::string& ckpt) {
  Recipe r = parse_recipe(checkpoint_recipe(ckpt), ckpt + "/recipe.yaml");
  LanguageModel m(r.model);
  load_checkpoint(ckpt, *m, nullptr, torch::kCPU);
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : m->named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

// The largest absolute parameter difference between two checkpoints.
double max_param_diff(const std::string& a, const std::string& b) {
  const auto pa = checkpoint_params(a), pb = checkpoint_params(b);
  EXPECT_EQ(pa.size(), pb.size());
  double worst = 0;
  for (const auto& [name, t] : pa) worst = std::max(worst, (t - pb.at(name)).abs().max().item<double>());
  return worst;
}

// The "rank R: parameter checksum X" lines of a run.
std::map<int, std::string> rank_checksums(const std::string& out) {
  std::map<int, std::string> sums;
  const std::regex line("rank (\\d+): parameter checksum ([0-9a-f]+)");
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) {
    sums[std::stoi((*it)[1])] = (*it)[2];
  }
  return sums;
}

std::string ckpt(const std::string& dir, int step) {
  char name[32];
  std::snprintf(name, sizeof name, "/checkpoints/step-%08d", step);
  return dir + name;
}

TEST(Launch, TwoRanksMatchOneProcessWithTheDoubledBatch) {
  const auto two = fresh_run_dir("dist_two"), one = fresh_run_dir("dist_one");
  CliRun r2 = launch_two(train_args(two, {"train.batch_size=2"}));
  ASSERT_EQ(r2.code, 0) << r2.out;
  CliRun r1 = run_cli(train_args(one, {"train.batch_size=4"}), kTimeout);
  ASSERT_EQ(r1.code, 0) << r1.out;

  expect_losses_close(one, two, 6);
  const double diff = max_param_diff(ckpt(one, 6), ckpt(two, 6));
  EXPECT_LT(diff, 1e-4) << "final parameters of the 1x4 and 2x2 runs";

  const auto sums = rank_checksums(r2.out);
  ASSERT_EQ(sums.size(), 2u) << r2.out;
  EXPECT_EQ(sums.at(0), sums.at(1));
  EXPECT_NE(r2.out.find("parameters identical on all 2 ranks"), std::string::npos) << r2.out;

  const auto records = step_records(two);
  ASSERT_FALSE(records.empty());
  const auto& last = records.back();
  EXPECT_EQ(last["world_size"], 2);
  EXPECT_EQ(last["tokens"], 6 * 2 * 2 * 64);  // global tokens: steps x ranks x batch x seq_len
  ASSERT_EQ(last["rank_tokens_per_s"].size(), 2u);
  for (const auto& t : last["rank_tokens_per_s"]) EXPECT_GT(t.get<double>(), 0);
  EXPECT_GT(last["allreduce_ms"].get<double>(), 0);
  EXPECT_GT(last["allreduce_buckets_overlapped"].get<int64_t>(), 0);
  EXPECT_EQ(step_records(one).back()["world_size"], 1);
}

TEST(Launch, GradientAccumulationMatchesToo) {
  const auto two = fresh_run_dir("dist_accum_two"), one = fresh_run_dir("dist_accum_one");
  CliRun r2 = launch_two(train_args(two, {"train.batch_size=1", "train.grad_accum=2", "train.steps=4"}));
  ASSERT_EQ(r2.code, 0) << r2.out;
  CliRun r1 = run_cli(train_args(one, {"train.batch_size=2", "train.grad_accum=2", "train.steps=4"}), kTimeout);
  ASSERT_EQ(r1.code, 0) << r1.out;
  expect_losses_close(one, two, 4);
}

TEST(Launch, NonFiniteStepsAreSkippedOnEveryRankAlike) {
  const auto dir = fresh_run_dir("dist_nan_skip");
  CliRun r = launch_two(train_args(dir, {"train.batch_size=2", "train.lr=1e30", "train.warmup=0",
                                         "train.grad_clip=0", "train.on_nonfinite=skip"}));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_GT(step_records(dir).back()["skipped_steps"].get<int64_t>(), 0);
  const auto sums = rank_checksums(r.out);
  ASSERT_EQ(sums.size(), 2u) << r.out;
  EXPECT_EQ(sums.at(0), sums.at(1));
}

TEST(Launch, DeadRankFailsTheRunFastNamingIt) {
  const auto dir = fresh_run_dir("dist_dead");
  const auto t0 = Clock::now();
  CliRun r = launch_two(train_args(dir, {"train.batch_size=2", "train.dist_timeout_s=30"}),
                        "LONGTRAIN_TEST_FAULT=1:3:die ", "--grace-s 5");
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("longtrain launch: error: rank 1 was killed by signal"), std::string::npos) << r.out;
  EXPECT_LT(s, 25) << "should not wait for the 30 s collective timeout";
}

TEST(Launch, HungRankMakesTheOthersTimeOut) {
  const auto dir = fresh_run_dir("dist_hang");
  const auto t0 = Clock::now();
  CliRun r = launch_two(train_args(dir, {"train.batch_size=2", "train.dist_timeout_s=8"}),
                        "LONGTRAIN_TEST_FAULT=1:3:hang ", "--grace-s 1");
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("longtrain: error: rank 0: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("longtrain launch: error: rank 0 exited with code 1"), std::string::npos) << r.out;
  EXPECT_LT(s, 40);
}

TEST(Launch, SigtermToOneRankCheckpointsOnceAndStopsAll) {
  const auto dir = fresh_run_dir("dist_sigterm");
  std::vector<std::string> argv_s = {LONGTRAIN_BINARY, "launch", "--nproc", "2", "--"};
  {
    std::istringstream words(train_args(dir, {"train.batch_size=2", "train.steps=100000"}));
    for (std::string w; words >> w;) argv_s.push_back(w);
  }
  const pid_t pid = spawn_quiet(argv_s);
  ASSERT_GE(pid, 0);
  // Wait for a few logged steps, then signal rank 1 alone (the launcher's
  // second child).
  for (int i = 0; i < 600 && step_records(dir).size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::ifstream children("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> kids;
  for (pid_t k; children >> k;) kids.push_back(k);
  ASSERT_EQ(kids.size(), 2u);
  kill(kids[1], SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const auto ckpts = list_checkpoints(dir);
  ASSERT_EQ(ckpts.size(), 1u);
  verify_checkpoint(ckpts[0]);
  EXPECT_EQ(read_train_state(ckpts[0]).step, static_cast<int64_t>(step_records(dir).size()));
}

TEST(Launch, ResumesATwoRankCheckpointOnTwoRanksOrOne) {
  const auto straight = fresh_run_dir("dist_resume_straight");
  ASSERT_EQ(launch_two(train_args(straight, {"train.batch_size=2"})).code, 0);

  const auto split = fresh_run_dir("dist_resume_split");
  CliRun first = launch_two(train_args(split, {"train.batch_size=2"}) + " --stop-after 3");
  ASSERT_EQ(first.code, 0) << first.out;
  const auto three = ckpt(split, 3);
  ASSERT_EQ(read_train_state(three).step, 3);

  // Same world size: bit-exact, as a single-process resume is.
  CliRun again = launch_two(train_args(split, {"train.batch_size=2"}) + " --resume auto");
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_EQ(logged_losses(split), logged_losses(straight));
  EXPECT_EQ(max_param_diff(ckpt(split, 6), ckpt(straight, 6)), 0.0);

  // One process with the same global batch (1 x 4) continues the same run: the
  // windows are the same global slots, so only fp32 summation order differs.
  const auto solo = fresh_run_dir("dist_resume_solo");
  CliRun one = run_cli(train_args(solo, {"train.batch_size=4"}) + " --resume " + three, kTimeout);
  ASSERT_EQ(one.code, 0) << one.out;
  const auto a = logged_losses(straight), b = logged_losses(solo);
  ASSERT_EQ(b.size(), 3u);  // steps 4-6
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(a[i + 3], b[i], 1e-5 * std::abs(a[i + 3])) << "step " << i + 4;
  EXPECT_LT(max_param_diff(ckpt(solo, 6), ckpt(straight, 6)), 1e-4);
}

TEST(Launch, BadOptionsAreUsageErrors) {
  EXPECT_EQ(run_cli("launch --nproc 2").code, 2);  // no command
  CliRun multi = run_cli("launch --nproc 2 --nnodes 2 -- train x.yaml");
  EXPECT_EQ(multi.code, 2);
  EXPECT_NE(multi.out.find("--master"), std::string::npos) << multi.out;
  CliRun help = run_cli("launch --help");
  EXPECT_EQ(help.code, 0);
  for (const char* opt : {"--nproc", "--nnodes", "--node-rank", "--master"}) {
    EXPECT_NE(help.out.find(opt), std::string::npos) << opt;
  }
}

}  // namespace
}  // namespace longtrain
