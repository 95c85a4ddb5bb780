// See profile.h.
#include "trainer/profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>

namespace longtrain {
namespace {

namespace kp = torch::autograd::profiler;
namespace pi = torch::profiler::impl;
using nlohmann::json;

// What Kineto records: the host, and the GPU when the run is on one.
// Input shapes are recorded for the launching-operator table.
pi::ProfilerConfig config() { return pi::ProfilerConfig(pi::ProfilerState::KINETO, /*report_input_shapes=*/true); }

std::set<pi::ActivityType> activities(const torch::Device& device) {
  std::set<pi::ActivityType> out{pi::ActivityType::CPU};
  if (device.is_cuda()) out.insert(pi::ActivityType::CUDA);
  return out;
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

bool contains_any(const std::string& s, std::initializer_list<const char*> parts) {
  return std::any_of(parts.begin(), parts.end(), [&](const char* p) { return s.find(p) != std::string::npos; });
}

struct Entry {
  double ms = 0;
  int64_t count = 0;
};

// Device events of the window: GPU activity on CUDA; on CPU, the top-level
// ATen operators of each thread (an operator inside another is not counted twice).
std::vector<const kp::KinetoEvent*> busy_events(const std::vector<kp::KinetoEvent>& events, bool cuda) {
  std::vector<const kp::KinetoEvent*> out;
  if (cuda) {
    for (const auto& e : events)
      if (e.deviceType() == c10::DeviceType::CUDA && e.durationNs() > 0) out.push_back(&e);
    return out;
  }
  std::vector<const kp::KinetoEvent*> cpu;
  for (const auto& e : events)
    if (e.deviceType() == c10::DeviceType::CPU && e.name().rfind("aten::", 0) == 0) cpu.push_back(&e);
  std::sort(cpu.begin(), cpu.end(), [](auto* a, auto* b) {
    return a->startThreadId() != b->startThreadId() ? a->startThreadId() < b->startThreadId()
                                                    : a->startNs() < b->startNs();
  });
  uint64_t thread = 0, end = 0;
  for (auto* e : cpu) {
    if (e->startThreadId() != thread || e->startNs() >= end) {
      out.push_back(e);
      thread = e->startThreadId();
      end = e->endNs();
    }
  }
  return out;
}

// GPU time by the ATen operator that launched each kernel (the innermost
// aten:: op around its launch on the CPU), with the autograd node for work
// launched in the backward: "AddBackward0 > aten::add_". On CPU: empty.
std::map<std::string, Entry> by_launching_op(const std::vector<kp::KinetoEvent>& events, int64_t steps) {
  std::map<std::string, Entry> out;
  struct Span {
    uint64_t start, end;
    std::string name;
  };
  // The innermost op's first input, so that launches of one op on different
  // tensors stay apart: "aten::add_ (BFloat16[65536, 3072])".
  auto first_input = [](const kp::KinetoEvent& e) {
    const auto shapes = e.shapes();
    const auto dtypes = e.dtypes();
    if (shapes.empty() || dtypes.empty() || dtypes[0].empty()) return std::string();
    std::string s = " (" + dtypes[0] + "[";
    for (size_t i = 0; i < shapes[0].size(); ++i) s += (i ? ", " : "") + std::to_string(shapes[0][i]);
    return s + "])";
  };
  std::map<uint64_t, std::vector<Span>> ops;      // thread -> aten ops and autograd nodes
  std::map<uint64_t, const kp::KinetoEvent*> launch;  // correlation id -> runtime call
  for (const auto& e : events) {
    if (e.deviceType() != c10::DeviceType::CPU) continue;
    const std::string n = e.name();
    if (n.rfind("cuda", 0) == 0 || n.rfind("cu", 0) == 0) {
      if (e.correlationId() != 0) launch[e.correlationId()] = &e;
    } else if (n.rfind("aten::", 0) == 0 || n.rfind("autograd::engine::evaluate_function: ", 0) == 0) {
      ops[e.startThreadId()].push_back({e.startNs(), e.endNs(), n.rfind("aten::", 0) == 0 ? n + first_input(e) : n});
    }
  }
  for (auto& [thread, spans] : ops) {
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.start < b.start; });
  }
  for (const auto& e : events) {
    if (e.deviceType() != c10::DeviceType::CUDA || e.durationNs() == 0) continue;
    auto l = launch.find(e.correlationId());
    std::string name = "(unattributed)";
    if (l != launch.end()) {
      const auto& spans = ops[l->second->startThreadId()];
      const uint64_t t = l->second->startNs();
      std::string inner, node;
      for (const auto& s : spans) {  // spans sorted by start: the last container is the innermost
        if (s.start > t) break;
        if (s.end < t) continue;
        if (s.name.rfind("autograd::", 0) == 0) node = s.name.substr(37);
        else inner = s.name;
      }
      name = node.empty() ? inner : node + " > " + inner;
      if (name.empty()) name = "(no aten op)";
    }
    Entry& x = out[name];
    x.ms += static_cast<double>(e.durationNs()) / 1e6 / static_cast<double>(steps);
    x.count += 1;
  }
  return out;
}

}  // namespace

std::string profile_category(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (contains_any(n, {"memcpy", "memset", "aten::copy_", "aten::to", "aten::_to_copy"})) return "copy";
  if (contains_any(n, {"longtrain::", "sparse_attention", "linear_attention", "chunk_kernel", "dkdv_kernel",
                       "aft_", "block_state", "scan_kernel"}))
    return "mixer kernels";
  if (contains_any(n, {"flash", "fmha", "attention", "cudnn", "sdpa"})) return "attention";
  if (contains_any(n, {"gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::bmm",
                       "aten::addmm", "aten::matmul", "aten::linear"}))
    return "matmul";
  if (contains_any(n, {"layer_norm", "layernorm", "rms_norm", "rmsnorm", "norm_kernel"})) return "norm";
  if (contains_any(n, {"adam", "multi_tensor", "foreach"})) return "optimizer";
  return "elementwise";
}

StepProfiler::StepProfiler(std::string dir, int64_t steps, int64_t warmup, torch::Device device)
    : dir_(std::move(dir)), steps_(steps), warmup_(warmup), device_(device) {
  if (dir_.empty()) return;
  if (steps_ < 1 || warmup_ < 0) {
    throw std::invalid_argument("--profile-steps must be >= 1 and --profile-warmup >= 0, got " +
                                std::to_string(steps_) + " and " + std::to_string(warmup_));
  }
  std::filesystem::create_directories(dir_);
  kp::prepareProfiler(config(), activities(device_));
}

StepProfiler::~StepProfiler() {
  if (recording_) {
    try {
      kp::disableProfiler();  // an exception unwound the run: stop recording, write nothing
    } catch (...) {
    }
  }
}

void StepProfiler::before_step(int64_t steps_done) {
  if (dir_.empty() || done_ || recording_ || steps_done != warmup_) return;
  synchronize(device_);
  kp::enableProfiler(config(), activities(device_));
  recording_ = true;
  first_ = steps_done;
  t0_ = std::chrono::steady_clock::now();
}

void StepProfiler::after_step(int64_t steps_done) {
  last_ = steps_done;
  if (recording_ && steps_done - first_ >= steps_) stop_and_write(steps_done - first_);
}

void StepProfiler::finish() {
  if (dir_.empty() || done_) return;
  if (!recording_) {
    std::cerr << "profile: the run ended before step " << warmup_ + 1
              << " of this invocation; nothing was recorded (lower --profile-warmup)" << std::endl;
    done_ = true;
    return;
  }
  std::cerr << "profile: the run ended inside the window; writing what was recorded" << std::endl;
  stop_and_write(std::max<int64_t>(1, last_ - first_));
}

void StepProfiler::stop_and_write(int64_t recorded) {
  synchronize(device_);
  const double wall_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count() / recorded;
  auto result = kp::disableProfiler();
  recording_ = false;
  done_ = true;
  const std::string trace = dir_ + "/trace.json";
  result->save(trace);

  const bool cuda = device_.is_cuda();
  std::map<std::string, Entry> by_name, by_category;
  double busy = 0;
  for (const auto* e : busy_events(result->events(), cuda)) {
    const double ms = static_cast<double>(e->durationNs()) / 1e6 / static_cast<double>(recorded);
    busy += ms;
    Entry& n = by_name[e->name()];
    n.ms += ms;
    n.count += 1;
    Entry& c = by_category[profile_category(e->name())];
    c.ms += ms;
    c.count += 1;
  }
  std::vector<std::pair<std::string, Entry>> top(by_name.begin(), by_name.end());
  std::sort(top.begin(), top.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  if (top.size() > 25) top.resize(25);

  json j = {{"device", cuda ? "cuda" : "cpu"},
            {"steps", recorded},
            {"first_step_of_invocation", first_ + 1},
            {"wall_ms_per_step", wall_ms},
            {"busy_ms_per_step", busy},
            {"gap_ms_per_step", std::max(0.0, wall_ms - busy)},
            {"busy_is", cuda ? "GPU kernels, memcpy and memset" : "top-level ATen operators (inclusive)"},
            {"trace", trace}};
  std::ostringstream txt;
  txt << std::fixed << std::setprecision(3);
  txt << "profile of " << recorded << " step(s) from step " << first_ + 1 << " of this invocation ("
      << (cuda ? "cuda" : "cpu") << ")\n"
      << "  wall " << wall_ms << " ms/step, busy " << busy << " ms (" << 100.0 * busy / wall_ms << "%), gap "
      << std::max(0.0, wall_ms - busy) << " ms\n  by category (ms/step, launches/step, share of busy):\n";
  std::vector<std::pair<std::string, Entry>> cats(by_category.begin(), by_category.end());
  std::sort(cats.begin(), cats.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  for (const auto& [name, e] : cats) {
    j["categories"][name] = {{"ms_per_step", e.ms}, {"launches_per_step", e.count / recorded}};
    txt << "    " << std::left << std::setw(15) << name << std::right << std::setw(10) << e.ms << std::setw(8)
        << e.count / recorded << std::setw(8) << std::setprecision(1) << 100.0 * e.ms / busy << "%\n"
        << std::setprecision(3);
  }
  txt << "  top " << top.size() << " by time:\n";
  for (const auto& [name, e] : top) {
    j["top"].push_back({{"name", name}, {"ms_per_step", e.ms}, {"calls_per_step", e.count / recorded}});
    txt << "    " << std::setw(9) << e.ms << " ms " << std::setw(5) << e.count / recorded << "x  "
        << name.substr(0, 110) << "\n";
  }
  if (cuda) {
    const auto ops = by_launching_op(result->events(), recorded);
    std::vector<std::pair<std::string, Entry>> top_ops(ops.begin(), ops.end());
    std::sort(top_ops.begin(), top_ops.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    if (top_ops.size() > 25) top_ops.resize(25);
    txt << "  top " << top_ops.size() << " launching operators by GPU time:\n";
    for (const auto& [name, e] : top_ops) {
      j["top_ops"].push_back({{"op", name}, {"ms_per_step", e.ms}, {"kernels_per_step", e.count / recorded}});
      txt << "    " << std::setw(9) << e.ms << " ms " << std::setw(5) << e.count / recorded << "x  "
          << name.substr(0, 110) << "\n";
    }
  }
  std::ofstream(dir_ + "/summary.json") << j.dump(1) << "\n";
  std::ofstream(dir_ + "/summary.txt") << txt.str();
  std::cerr << txt.str() << "profile: " << trace << ", " << dir_ << "/summary.{json,txt}" << std::endl;
}

}  // namespace longtrain
