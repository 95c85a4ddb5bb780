// Device placement, mixed precision and device-specific bookkeeping (RNG
// states, peak memory), kept in one place so the loop has no #ifdefs.
#pragma once

#include <torch/torch.h>

#include <string>

namespace longtrain {

// "auto" -> CUDA when available, else CPU. "cuda" without a GPU is an error.
torch::Device choose_device(const std::string& spec);
// "auto" -> bf16 autocast on CUDA, fp32 on CPU.
bool use_bf16(const std::string& dtype, const torch::Device& device);

// Enables bf16 autocast for the device while alive (no-op when !enabled).
class AutocastGuard {
 public:
  AutocastGuard(const torch::Device& device, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType type_;
  bool enabled_;
  bool prev_;
};

// Peak memory since the last reset: CUDA allocator peak on a GPU, process peak
// RSS on CPU.
int64_t peak_memory_bytes(const torch::Device& device);
void reset_peak_memory(const torch::Device& device);

// Default generators' states (CPU, and CUDA when present), as named tensors.
std::vector<std::pair<std::string, torch::Tensor>> rng_states();
void set_rng_states(const std::vector<std::pair<std::string, torch::Tensor>>& states);

}  // namespace longtrain
