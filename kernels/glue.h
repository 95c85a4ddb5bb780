// Helpers shared by the kernels' LibTorch glue (kernels/*/op.cpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace longtrain::kernels {

// [B, H, L, D] with the head dim contiguous and rows 16-byte aligned, as the
// kernels' vector copies need: t itself when it already is, else a copy.
inline torch::Tensor rows_aligned(const torch::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(2) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(0) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  return ok ? t : t.contiguous();
}

// Element strides of dims 0..2 (batch, head, row).
inline void set_strides(int64_t (&s)[3], const torch::Tensor& t) {
  s[0] = t.stride(0);
  s[1] = t.stride(1);
  s[2] = t.stride(2);
}

}  // namespace longtrain::kernels
