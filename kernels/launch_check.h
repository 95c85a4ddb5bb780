// The kernels' launch check (host side): the last CUDA error, thrown with the
// kernel's name.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace longtrain::kernels {

// `launched`: what a launch call returned itself (cudaLaunchKernelEx).
inline void check_launch(const char* name, cudaError_t launched = cudaSuccess) {
  const cudaError_t err = launched != cudaSuccess ? launched : cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(err));
}

}  // namespace longtrain::kernels
