// Data parallelism over LibTorch's c10d: rendezvous through a TCPStore on
// MASTER_ADDR:MASTER_PORT (rank 0 hosts it), ProcessGroupNCCL on GPUs,
// ProcessGroupGloo on CPU. Nothing here touches sockets itself.
//
// The environment is torchrun's: RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (`longtrain launch` sets them; so
// can torchrun or a Slurm wrapper). Without WORLD_SIZE, or with 1, there is no
// process group and training is the plain single-process loop, bit for bit.
//
// Gradients: GradientReducer sums them over ranks in buckets of about
// `bucket_bytes`, each all-reduce launched asynchronously from the parameters'
// post-accumulate-grad hooks as soon as its bucket's gradients are final, so
// communication overlaps the rest of backward (as torch DDP does). Buckets hold
// parameters in reverse registration order, roughly the order backward
// finishes them, and are launched strictly in bucket order, so every rank
// issues the same collectives in the same order (Gloo and NCCL require it).
// The loop scales each rank's loss by its share of the global token count, so
// the sum is the gradient of the mean loss over the global batch.
//
// Failures: every collective and the rendezvous time out after the recipe's
// train.dist_timeout_s; a dead peer makes Gloo collectives throw at once. Either
// surfaces as an exception that main() reports as "rank R: ...".
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace longtrain {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool active() const { return world_size > 1; }
};

// Reads torchrun's variables; throws std::runtime_error naming the variable
// when one is malformed or inconsistent (RANK outside [0, WORLD_SIZE), ...).
DistEnv dist_env_from_environment();

// One process's membership in the data-parallel group. With world_size 1
// every collective is a no-op.
class Distributed {
 public:
  // Rendezvous and process-group creation; device picks NCCL (CUDA) or Gloo.
  Distributed(const DistEnv& env, const torch::Device& device, std::chrono::milliseconds timeout);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool active() const { return env_.active(); }
  bool is_main() const { return env_.rank == 0; }
  const std::string& backend_name() const { return backend_name_; }
  // Where collective operands live: the training device (CPU for Gloo).
  const torch::Device& device() const { return device_; }

  // Blocking collectives, in place.
  void all_reduce(torch::Tensor& t, bool max = false);
  void broadcast(torch::Tensor& t, int root = 0);
  void barrier();
  // Async sum (the reducer's buckets).
  c10::intrusive_ptr<c10d::Work> all_reduce_async(torch::Tensor& t);

 private:
  DistEnv env_;
  torch::Device device_;
  std::string backend_name_ = "none";
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
};

// Sums of `values` over ranks, element by element (float64), on every rank.
std::vector<double> all_reduce_values(Distributed& dist, const std::vector<double>& values);
// Every rank's `value`, in rank order, on every rank.
std::vector<double> all_gather_value(Distributed& dist, double value);

// Copies rank 0's parameters and buffers into every rank's module.
void broadcast_module(Distributed& dist, torch::nn::Module& module);

// Throws std::runtime_error saying `what` differs between ranks unless `value`
// (a 64-bit fingerprint) is the same on all of them.
void check_same_on_all_ranks(Distributed& dist, uint64_t value, const std::string& what);

// A 64-bit checksum of the module's parameters' bytes, in registration order.
uint64_t parameter_checksum(torch::nn::Module& module);

// Test hook (LONGTRAIN_TEST_FAULT=RANK:STEP:die|hang): the named rank kills
// itself with SIGKILL, or sleeps forever, when it reaches that step, so tests
// can check that the other ranks fail fast instead of hanging.
void maybe_inject_test_fault(int rank, int64_t step);

class GradientReducer {
 public:
  static constexpr int64_t kDefaultBucketBytes = 25 << 20;  // torch DDP's default

  GradientReducer(Distributed& dist, std::vector<torch::Tensor> params,
                  int64_t bucket_bytes = kDefaultBucketBytes);
  ~GradientReducer();  // removes the hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Call before each backward: only the backward that completes the step's
  // gradients (the last micro-batch) launches all-reduces.
  void prepare_for_backward(bool final_micro);
  // Launches the buckets whose hooks did not fire (parameters without a
  // gradient this step), waits for all, and writes the sums into .grad.
  // `synchronize`: wait for the device too, so the timings are real on CUDA.
  void finish(bool synchronize = false);

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Of the last step: buckets launched from hooks during backward (overlapped),
  // milliseconds from the first launch to all sums written back, and the part
  // of it spent waiting after backward had finished.
  int64_t launched_in_backward() const { return launched_in_backward_; }
  double allreduce_ms() const { return allreduce_ms_; }
  double wait_ms() const { return wait_ms_; }

  // Called by the hooks.
  void on_gradient_ready(size_t param);

 private:
  struct Bucket {
    std::vector<size_t> params;
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    size_t pending = 0;
    bool launched = false;
    c10::intrusive_ptr<c10d::Work> work;
  };
  void copy_in(size_t bucket_index, size_t position);
  void launch_ready();
  void launch(Bucket& b);

  Distributed& dist_;
  std::vector<torch::Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<size_t, size_t>> where_;  // param -> (bucket, position)
  std::vector<bool> ready_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  bool in_finish_ = false;
  std::chrono::steady_clock::time_point first_launch_;
  int64_t launched_in_backward_ = 0;
  double allreduce_ms_ = 0, wait_ms_ = 0;
  std::mutex mutex_;
};

}  // namespace longtrain
