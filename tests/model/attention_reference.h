// Test references shared by the model and kernel suites: a pattern or a block
// layout expanded to a dense [L, L] mask, and naive dense O(L^2) attention
// with the same math as model/sparse_attention.h (global tokens included).
// Only for test sizes.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/block_layout.h"

namespace longtrain {

// [L, L] bool from pattern.allowed.
inline torch::Tensor dense_mask(const SparsePattern& p, int64_t L) {
  auto m = torch::zeros({L, L}, torch::kBool);
  auto a = m.accessor<bool, 2>();
  for (int64_t q = 0; q < L; ++q)
    for (int64_t k = 0; k < L; ++k) a[q][k] = p.allowed(q, k);
  return m;
}

// The layout expanded back to [L, L]: what the block-sparse code computes.
inline torch::Tensor layout_mask(const BlockLayout& layout) {
  const int64_t L = layout.seq_len, b = layout.block;
  auto m = torch::zeros({L, L}, torch::kBool);
  auto a = m.accessor<bool, 2>();
  for (int64_t qb = 0; qb < layout.n_blocks; ++qb)
    for (int64_t v = layout.row_ptr[qb]; v < layout.row_ptr[qb + 1]; ++v) {
      const int64_t kb = layout.cols[v];
      for (int64_t q = qb * b; q < std::min(L, qb * b + b); ++q)
        for (int64_t k = kb * b; k < std::min(L, kb * b + b); ++k)
          a[q][k] = layout.mask_index[v] < 0 || layout.masks[layout.mask_index[v] * b * b + (q - qb * b) * b + (k - kb * b)];
    }
  return m;
}

// Naive dense attention with the same math as sparse_attention: head h allows
// masks[h]; with global tokens (gmask [B, L]), every query also sees the
// global keys (causal: earlier ones) and global rows attend to every key
// (causal: every earlier one) through gq, gk, gv.
inline torch::Tensor dense_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const std::vector<torch::Tensor>& masks, bool causal,
                                     const torch::Tensor& gmask = {}, const torch::Tensor& gq = {},
                                     const torch::Tensor& gk = {}, const torch::Tensor& gv = {}) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto allowed = torch::stack(masks).view({1, H, L, L});
  auto order = torch::arange(L, torch::TensorOptions().device(q.device()));
  auto past = order.view({L, 1}) >= order.view({1, L});  // [q, k]: k <= q
  if (gmask.defined()) {
    auto global_col = gmask.view({B, 1, 1, L});
    allowed = allowed | (causal ? global_col & past.view({1, 1, L, L}) : global_col);
  }
  auto s = torch::matmul(q, k.transpose(-1, -2)) * scale;
  auto out = torch::matmul(torch::softmax(s.masked_fill(allowed.logical_not(), -INFINITY), -1), v);
  if (!gmask.defined()) return out;
  auto sg = torch::matmul(gq, gk.transpose(-1, -2)) * scale;
  if (causal) sg = sg.masked_fill(past.logical_not().view({1, 1, L, L}), -INFINITY);
  auto rows = torch::matmul(torch::softmax(sg, -1), gv);
  return torch::where(gmask.view({B, 1, L, 1}), rows, out);
}

}  // namespace longtrain
