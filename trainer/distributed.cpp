// See distributed.h.
#include "trainer/distributed.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <thread>

#include "trainer/checksum.h"

namespace longtrain {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// An integer environment variable; `fallback` when unset.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > (1 << 24)) {
    throw std::runtime_error(std::string("environment variable ") + name + "='" + v +
                             "' is not a non-negative integer");
  }
  return static_cast<int>(x);
}

// A collective's failure, said in the user's terms: a peer that died closes
// the connection; one that hangs makes this rank time out.
void wait_or_throw(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
  const std::string why = std::string(what) +
                          " failed (another rank died, hung past train.dist_timeout_s, or disagrees on the "
                          "collectives): ";
  try {
    work->wait();
  } catch (const c10::Error& e) {
    throw std::runtime_error(why + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw std::runtime_error(why + e.what());
  }
}

std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  // GLOO_SOCKET_IFNAME is torch's own knob for multi-homed hosts.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  // A single-node group talks over loopback, whatever the hostname resolves to.
  if (master_addr == "localhost" || master_addr.rfind("127.", 0) == 0) {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

// Marks a parameter's gradient final for this step (after it was accumulated).
struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  ReadyHook(GradientReducer* reducer, size_t param) : reducer_(reducer), param_(param) {}
  void operator()(const torch::autograd::Variable&) override { reducer_->on_gradient_ready(param_); }
  GradientReducer* reducer_;
  size_t param_;
};

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  e.world_size = env_int("WORLD_SIZE", 1);
  if (e.world_size < 1) throw std::runtime_error("WORLD_SIZE must be >= 1");
  e.rank = env_int("RANK", 0);
  if (e.rank >= e.world_size) {
    throw std::runtime_error("RANK=" + std::to_string(e.rank) + " is outside [0, WORLD_SIZE=" +
                             std::to_string(e.world_size) + ")");
  }
  e.local_rank = env_int("LOCAL_RANK", 0);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", 1);
  if (e.local_rank >= std::max(e.local_world_size, 1)) {
    throw std::runtime_error("LOCAL_RANK=" + std::to_string(e.local_rank) + " is outside [0, LOCAL_WORLD_SIZE=" +
                             std::to_string(e.local_world_size) + ")");
  }
  if (const char* a = std::getenv("MASTER_ADDR"); a != nullptr && *a != '\0') e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", e.master_port);
  if (e.active() && (e.master_port < 1 || e.master_port > 65535)) {
    throw std::runtime_error("MASTER_PORT=" + std::to_string(e.master_port) + " is not a TCP port");
  }
  return e;
}

Distributed::Distributed(const DistEnv& env, const torch::Device& device, std::chrono::milliseconds timeout)
    : env_(env), device_(device) {
  if (!env.active()) return;
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = static_cast<size_t>(env.world_size);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    store_ = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const c10::Error& e) {
    throw std::runtime_error("rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port) +
                             " failed: " + e.what_without_backtrace());
  }
  if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
    c10::cuda::set_device(device.has_index() ? device.index() : 0);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    backend_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, env.rank, env.world_size, opts);
    backend_name_ = "nccl";
#else
    throw std::runtime_error("train.device=cuda with WORLD_SIZE > 1 needs NCCL, which this build lacks "
                             "(configured without CUDA, a CUDA LibTorch, or nccl.h)");
#endif
  } else {
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(gloo_device(env.master_addr));
    backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, env.rank, env.world_size, opts);
    backend_name_ = "gloo";
  }
}

Distributed::~Distributed() {
  // Unwinding from a failed collective: tearing down a group whose peers are
  // dead or hung can block, and the process is about to exit non-zero anyway.
  if (std::uncaught_exceptions() > 0) {
    backend_.release();
    store_.release();
    return;
  }
  if (backend_) backend_->shutdown();
}

void Distributed::all_reduce(torch::Tensor& t, bool max) {
  if (!active()) return;
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  wait_or_throw(backend_->allreduce(v, o), "all-reduce");
}

c10::intrusive_ptr<c10d::Work> Distributed::all_reduce_async(torch::Tensor& t) {
  TORCH_CHECK(active(), "all_reduce_async needs a process group (WORLD_SIZE > 1)");
  std::vector<at::Tensor> v{t};
  return backend_->allreduce(v, c10d::AllreduceOptions{});
}

void Distributed::broadcast(torch::Tensor& t, int root) {
  if (!active()) return;
  std::vector<at::Tensor> v{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  wait_or_throw(backend_->broadcast(v, o), "broadcast");
}

void Distributed::barrier() {
  if (!active()) return;
  wait_or_throw(backend_->barrier(c10d::BarrierOptions{}), "barrier");
}

std::vector<double> all_reduce_values(Distributed& dist, const std::vector<double>& values) {
  auto t = torch::tensor(values, torch::kFloat64).to(dist.device());
  dist.all_reduce(t);
  t = t.cpu().contiguous();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

std::vector<double> all_gather_value(Distributed& dist, double value) {
  // A sum of one-hot rows: one collective that every backend has.
  std::vector<double> row(static_cast<size_t>(dist.world_size()), 0.0);
  row[static_cast<size_t>(dist.rank())] = value;
  return all_reduce_values(dist, row);
}

void broadcast_module(Distributed& dist, torch::nn::Module& module) {
  if (!dist.active()) return;
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) dist.broadcast(p);
  for (auto& b : module.buffers()) dist.broadcast(b);
}

void check_same_on_all_ranks(Distributed& dist, uint64_t value, const std::string& what) {
  if (!dist.active()) return;
  // max(v) == min(v), with min(v) = ~max(~v) (~ reverses int64 order).
  const auto v = static_cast<int64_t>(value);
  auto t = torch::tensor({v, ~v}, torch::kInt64).to(dist.device());
  dist.all_reduce(t, /*max=*/true);
  t = t.cpu();
  const int64_t hi = t[0].item<int64_t>(), lo = ~t[1].item<int64_t>();
  if (hi != lo) {
    throw std::runtime_error(what + " differs between ranks (this rank " + to_hex(value) + ", range " +
                             to_hex(static_cast<uint64_t>(lo)) + ".." + to_hex(static_cast<uint64_t>(hi)) + ")");
  }
}

uint64_t parameter_checksum(torch::nn::Module& module) {
  uint64_t h = 0;
  for (const auto& p : module.parameters()) {
    const auto c = p.detach().to(torch::kCPU).contiguous();
    h = checksum_bytes(c.data_ptr(), c.nbytes(), h);
  }
  return h;
}

void maybe_inject_test_fault(int rank, int64_t step) {
  static const std::string spec = [] {
    const char* v = std::getenv("LONGTRAIN_TEST_FAULT");
    return std::string(v ? v : "");
  }();
  if (spec.empty()) return;
  int fault_rank = -1;
  long long fault_step = -1;
  char kind[8] = {};
  if (std::sscanf(spec.c_str(), "%d:%lld:%7s", &fault_rank, &fault_step, kind) != 3) {
    throw std::runtime_error("LONGTRAIN_TEST_FAULT='" + spec + "' is not RANK:STEP:die|hang");
  }
  if (fault_rank != rank || fault_step != step) return;
  if (std::string(kind) == "die") std::raise(SIGKILL);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

GradientReducer::GradientReducer(Distributed& dist, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : dist_(dist), params_(std::move(params)), where_(params_.size()), ready_(params_.size(), false) {
  // Reverse registration order: the last layers' gradients are final first.
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    const bool fits = !buckets_.empty() && buckets_.back().flat.scalar_type() == p.scalar_type() &&
                      buckets_.back().flat.device() == p.device() &&
                      (buckets_.back().flat.numel() + p.numel()) * p.element_size() <= bucket_bytes;
    if (!fits) {
      buckets_.emplace_back();
      buckets_.back().flat = torch::zeros({0}, p.options().requires_grad(false));
    }
    Bucket& b = buckets_.back();
    where_[k] = {buckets_.size() - 1, b.params.size()};
    b.params.push_back(k);
    b.offsets.push_back(b.flat.numel());
    b.flat = torch::zeros({b.flat.numel() + p.numel()}, b.flat.options());
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k], std::make_unique<ReadyHook>(this, k));
  }
}

GradientReducer::~GradientReducer() {
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientReducer::prepare_for_backward(bool final_micro) {
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = final_micro;
  if (!final_micro) return;
  std::fill(ready_.begin(), ready_.end(), false);
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.launched = false;
    b.work.reset();
  }
  next_launch_ = 0;
  launched_in_backward_ = 0;
}

void GradientReducer::copy_in(size_t bucket_index, size_t position) {
  Bucket& b = buckets_[bucket_index];
  const auto& p = params_[b.params[position]];
  auto slot = b.flat.narrow(0, b.offsets[position], p.numel());
  if (p.grad().defined()) {
    slot.copy_(p.grad().reshape(-1));
  } else {
    slot.zero_();
  }
}

void GradientReducer::on_gradient_ready(size_t param) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;
  const auto [bucket, position] = where_[param];
  TORCH_CHECK(!ready_[param], "gradient reducer: parameter ", param, " was finalised twice in one backward");
  ready_[param] = true;
  copy_in(bucket, position);
  if (--buckets_[bucket].pending == 0) launch_ready();
}

void GradientReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    launch(buckets_[next_launch_]);
    ++next_launch_;
  }
}

void GradientReducer::launch(Bucket& b) {
  if (next_launch_ == 0) first_launch_ = Clock::now();
  if (!in_finish_) ++launched_in_backward_;
  b.work = dist_.all_reduce_async(b.flat);
  b.launched = true;
}

void GradientReducer::finish(bool synchronize) {
  std::lock_guard<std::mutex> lock(mutex_);
  TORCH_CHECK(armed_, "gradient reducer: finish() without prepare_for_backward(true)");
  const auto backward_done = Clock::now();
  in_finish_ = true;
  // Parameters that got no gradient in the final backward still take part,
  // with what they have (or zeros), so every rank launches every bucket.
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& b = buckets_[bi];
    for (size_t pos = 0; pos < b.params.size(); ++pos) {
      if (!ready_[b.params[pos]]) {
        ready_[b.params[pos]] = true;
        copy_in(bi, pos);
        --b.pending;
      }
    }
  }
  launch_ready();
  in_finish_ = false;
  armed_ = false;
  for (auto& b : buckets_) wait_or_throw(b.work, "gradient all-reduce");
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    for (size_t pos = 0; pos < b.params.size(); ++pos) {
      auto& p = params_[b.params[pos]];
      auto sum = b.flat.narrow(0, b.offsets[pos], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(sum);
      } else {
        p.mutable_grad() = sum.clone();
      }
    }
    b.work.reset();
  }
  if (synchronize && dist_.device().is_cuda()) torch::cuda::synchronize();
  const auto done = Clock::now();
  allreduce_ms_ = ms_between(first_launch_, done);
  wait_ms_ = ms_between(backward_done, done);
}

}  // namespace longtrain
