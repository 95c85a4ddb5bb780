// The q/k/v split of a fused projection with rotary positions (RoPE) applied
// to q and k, forward and backward, in one pass each: plain params for rope.cu
// (no torch types). See op.h for the shapes, model/rope.h for the math.
#pragma once

#include <cstdint>

namespace longtrain::kernels::rope {

enum class DType { kBFloat16, kFloat16 };

struct QkvRopeParams {
  // Forward: fused [B, L, 3, H, Dh] contiguous -> q, k [B, L, H, Dh] contiguous.
  const void* fused = nullptr;
  void* q = nullptr;
  void* k = nullptr;
  // Backward: dq, dk, dv [B, H, L, Dh] by element strides (batch, head, row;
  // the head dim contiguous) -> dfused [B, L, 3, H, Dh] contiguous.
  const void* dq = nullptr;
  const void* dk = nullptr;
  const void* dv = nullptr;
  void* dfused = nullptr;
  int64_t dq_strides[3] = {0, 0, 0}, dk_strides[3] = {0, 0, 0}, dv_strides[3] = {0, 0, 0};
  // [L, Dh / 2] fp32: cos and sin of each position's angles.
  const float* cos = nullptr;
  const float* sin = nullptr;
  int B = 0, L = 0, H = 0, Dh = 0;  // Dh a multiple of 4
};

void qkv_rope_fwd(const QkvRopeParams& p, DType dtype, void* stream);
void qkv_rope_bwd(const QkvRopeParams& p, DType dtype, void* stream);

}  // namespace longtrain::kernels::rope
