// The kernels' launch check (host side): the last CUDA error, thrown with the
// kernel's name.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace longtrain::kernels {

inline void check_launch(const char* name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(err));
}

}  // namespace longtrain::kernels
