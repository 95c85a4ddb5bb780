// The error CUDA's sync-debug "error" mode raises while fn runs (any read of
// the device from the host: .item(), a blocking device-to-host copy), or ""
// when fn reads nothing back. Builds without CUDA run fn and return "".
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace longtrain::testing {

inline std::string host_sync_error(const std::function<void()>& fn) {
#ifdef LONGTRAIN_WITH_CUDA
  struct Mode {  // back to "disabled" however fn leaves
    Mode() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
    ~Mode() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
  } mode;
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "";
#else
  fn();
  return "";
#endif
}

}  // namespace longtrain::testing
