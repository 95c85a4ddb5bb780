// Where a training step's time goes: `longtrain train RECIPE --profile DIR`.
//
// Records `steps` consecutive steps of this invocation, after `warmup` steps
// (allocator, cuDNN/cuBLAS heuristics and the data pipeline settle first),
// with LibTorch's Kineto profiler, then writes
//   DIR/trace.json          Chrome/Perfetto trace (chrome://tracing, ui.perfetto.dev)
//   DIR/summary.json, .txt  per step: wall time, device busy time and the gap
//                           (launch and host overhead: what CUDA graphs or
//                           fewer kernels would remove), busy time by category
//                           (matmul, attention, mixer kernels, norm, optimizer,
//                           elementwise, copies) and the top kernels.
// On CUDA the busy time is the sum of GPU kernel, memcpy and memset
// durations; on CPU (no device activity) it is the inclusive time of the
// top-level ATen operators, so the categories there are only indicative.
// Only the main rank profiles. Profiling slows the recorded steps a little
// (the trace's own overhead); the other steps are untouched.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace longtrain {

struct ProfileSummary;

class StepProfiler {
 public:
  // dir "": disabled (every call is a no-op). steps >= 1, warmup >= 0.
  StepProfiler(std::string dir, int64_t steps, int64_t warmup, torch::Device device);
  ~StepProfiler();
  // Called around every step with the invocation's step count so far.
  void before_step(int64_t steps_done);
  void after_step(int64_t steps_done);
  // Stops and writes early if the run ends inside the window (prints a note).
  void finish();
  bool active() const { return recording_; }

 private:
  void stop_and_write(int64_t recorded);

  std::string dir_;
  int64_t steps_, warmup_;
  torch::Device device_;
  bool recording_ = false, done_ = false;
  int64_t first_ = 0, last_ = 0;
  std::chrono::steady_clock::time_point t0_;
};

// Category of a kernel or operator name (exposed for tests): "matmul",
// "attention", "mixer kernels", "norm", "optimizer", "copy", "elementwise".
std::string profile_category(const std::string& name);

}  // namespace longtrain
