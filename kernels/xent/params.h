// Softmax cross-entropy of a chunk of logits rows, loss and gradient in one
// kernel (xent.cu): plain params, no torch types. See op.h.
#pragma once

#include <cstdint>

namespace longtrain::kernels::xent {

enum class DType { kBFloat16, kFloat16 };

struct XentParams {
  const void* logits = nullptr;    // [C, V] contiguous rows
  const int64_t* targets = nullptr;  // [C]; a target outside [0, V) is not counted
  float* loss = nullptr;           // [C]: lse - logit[target], 0 when not counted
  void* dlogits = nullptr;         // [C, V] contiguous: softmax - onehot(target), in the logits' dtype
  int64_t C = 0;
  int V = 0;
};

void softmax_xent(const XentParams& p, DType dtype, void* stream);

}  // namespace longtrain::kernels::xent
