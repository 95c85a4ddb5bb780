// LayerNorm / RMSNorm over the last dimension with the residual add fused in
// (norm.cu): plain params, no torch types. See op.h.
#pragma once

#include <cstdint>

namespace longtrain::kernels::norm {

enum class DType { kBFloat16, kFloat16 };

// One warp per row, 8 rows per CTA; each lane holds up to kMaxVectors vectors
// of 8 values (16-byte loads) of its row in registers: D <= 32 * 8 * 8 = 2048.
constexpr int kWarps = 8;
// The backward's CTAs are 4 warps, each with its own [2, D] fp32 sums of
// dy * xhat and dy in shared memory.
constexpr int kBwdWarps = 4;
constexpr int kMaxVectors = 8;
constexpr int kMaxD = 32 * 8 * kMaxVectors;

struct NormFwdParams {
  const void* x = nullptr;       // [N, D]
  const void* branch = nullptr;  // [N, D] or null: the row normalised is x + branch
  void* sum = nullptr;           // [N, D] x + branch rounded to the dtype (written when branch)
  void* y = nullptr;             // [N, D] normalised, scaled and shifted
  const float* weight = nullptr;  // [D]
  const float* bias = nullptr;    // [D]; null for RMSNorm
  float* mean = nullptr;          // [N]; null for RMSNorm
  float* rstd = nullptr;          // [N]
  int64_t N = 0;
  int D = 0;
  float eps = 1e-5f;
  bool rms = false;
};

struct NormBwdParams {
  const void* dy = nullptr;    // [N, D] gradient of y
  const void* dsum = nullptr;  // [N, D] or null: gradient that reached the normalised input directly
  const void* x = nullptr;     // [N, D] the normalised input (x + branch when there was one)
  const float* weight = nullptr;
  const float* mean = nullptr;  // null for RMSNorm
  const float* rstd = nullptr;
  void* dx = nullptr;           // [N, D] dy through the norm, plus dsum
  float* partial = nullptr;     // [backward_blocks(N), 2, D] scratch: per-CTA sums of dy * xhat and dy
  float* dweight = nullptr;     // [D]
  float* dbias = nullptr;       // [D] or null (RMSNorm)
  int64_t N = 0;
  int D = 0;
  bool rms = false;
};

// CTAs of the backward's row pass for N rows of D in `dtype` on the current
// device: as many as fit on it at once (each walks rows grid-stride and keeps
// its weight/bias gradient sums in shared memory), at most one per 4 rows.
// The caller allocates `partial` for this many.
int backward_blocks(int64_t N, int D, DType dtype);

void norm_forward(const NormFwdParams& p, DType dtype, void* stream);
void norm_backward(const NormBwdParams& p, DType dtype, int blocks, void* stream);

}  // namespace longtrain::kernels::norm
