// Helpers shared by the kernels' LibTorch glue (kernels/*/op.cpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace longtrain::kernels {

// Whether t's data starts on a 16-byte boundary (the kernels' vector loads).
inline bool aligned16(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// [B, H, L, D] with the head dim contiguous and rows 16-byte aligned, as the
// kernels' vector copies need: t itself when it already is, else a copy.
inline torch::Tensor rows_aligned(const torch::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(2) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(0) % 8 == 0 &&
                  aligned16(t);
  return ok ? t : t.contiguous();
}

// The gradient buffer of a [B, H, L, D] input: the input's own layout when it
// is dense (autograd would otherwise copy a leaf's gradient into that layout:
// 3 copies of [B, H, L, D] per step for contiguous q, k, v), else [B, L, H, D]
// storage, which the mixers' transpose back to [B, L, H * D] takes for free.
inline torch::Tensor grad_like(const torch::Tensor& x) {
  if (x.is_non_overlapping_and_dense() && x.stride(3) == 1) return rows_aligned(torch::empty_like(x));
  return torch::empty({x.size(0), x.size(2), x.size(1), x.size(3)}, x.options()).transpose(1, 2);
}

// Element strides of dims 0..2 (batch, head, row).
inline void set_strides(int64_t (&s)[3], const torch::Tensor& t) {
  s[0] = t.stride(0);
  s[1] = t.stride(1);
  s[2] = t.stride(2);
}

}  // namespace longtrain::kernels
