// See device.h.
#include "trainer/device.h"

#include <ATen/autocast_mode.h>
#include <sys/resource.h>

#include <stdexcept>

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace longtrain {

torch::Device choose_device(const std::string& spec) {
  if (spec == "cpu") return torch::kCPU;
  if (spec == "cuda") {
    if (!torch::cuda::is_available()) {
      throw std::runtime_error("train.device is 'cuda' but no CUDA device is available");
    }
    return torch::Device(torch::kCUDA, 0);
  }
  return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
}

bool use_bf16(const std::string& dtype, const torch::Device& device) {
  if (dtype == "bf16") return true;
  if (dtype == "fp32") return false;
  return device.is_cuda();
}

AutocastGuard::AutocastGuard(const torch::Device& device, bool enabled)
    : type_(device.type()), enabled_(enabled), prev_(false) {
  if (!enabled_) return;
  prev_ = at::autocast::is_autocast_enabled(type_);
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!enabled_) return;
  at::autocast::set_autocast_enabled(type_, prev_);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

int64_t peak_memory_bytes(const torch::Device& device) {
#ifdef LONGTRAIN_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[0].peak;  // [0]: the aggregate over pool kinds
  }
#endif
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

void reset_peak_memory(const torch::Device& device) {
#ifdef LONGTRAIN_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

std::vector<std::pair<std::string, torch::Tensor>> rng_states() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.emplace_back("cpu", gen.get_state());
  }
  if (torch::cuda::is_available()) {
    for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
      auto gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, i));
      std::lock_guard<std::mutex> lock(gen.mutex());
      out.emplace_back("cuda" + std::to_string(i), gen.get_state());
    }
  }
  return out;
}

void set_rng_states(const std::vector<std::pair<std::string, torch::Tensor>>& states) {
  for (const auto& [name, state] : states) {
    if (name == "cpu") {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state);
    } else if (name.rfind("cuda", 0) == 0 && torch::cuda::is_available()) {
      const int64_t idx = std::stoll(name.substr(4));
      if (idx >= static_cast<int64_t>(torch::cuda::device_count())) continue;
      auto gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, idx));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state);
    }
  }
}

}  // namespace longtrain
