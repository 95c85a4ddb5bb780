// Block-sparse flash attention on CUDA: the LibTorch entry point.
//
//   (o, lse) = sparse_attention_cuda(q, k, v, plan, exclude, scale)
//   q, k, v: [B, H, L, D] bf16 or fp16 on one CUDA device, head dim 64 or 128,
//            contiguous in D (any other strides); o: [B, H, L, D] (stored
//            [B, L, H, D], so o.transpose(1, 2) is contiguous); lse: [B, H, L]
//            fp32, natural log, -inf on rows with no allowed key.
//   Differentiable in q, k, v through both o and lse.
//
// The plan holds every head's layout re-cut into 64 x 64 tiles (params.h),
// already on the device: building it is not part of the step. `exclude`
// ([B, n_tiles] int64 bit words, or undefined) removes keys everywhere — the
// Longformer global keys when the caller scores them as dense columns.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels/sparse_attention/params.h"

namespace longtrain::kernels {

// One layout in 64 x 64 tiles, on the host (built by model/, which owns layouts).
struct TileLayout {
  int64_t seq_len = 0;
  int64_t n_tiles = 0;
  std::vector<int32_t> row_ptr;   // [n_tiles + 1]
  std::vector<int32_t> cols;      // key tile per visit
  std::vector<int32_t> mask_of;   // -1 (full) or index into masks
  std::vector<uint64_t> masks;    // [n_masks * 64]: word r = query row r, bit c = key c
  int64_t visits() const { return static_cast<int64_t>(cols.size()); }
};

struct SparseAttentionPlan {
  torch::Tensor row_ptr, cols, row_mask, col_ptr, rows, col_mask;  // int32
  torch::Tensor masks;        // int64 (bit words)
  torch::Tensor head_layout;  // int32 [H]
  // int32 work items and split slots (params.h's WorkItems): [n_layouts,
  // n_items, kItemFields] and [n_layouts, n_split, kSplitFields]; rows for
  // the forward kernel, columns for the dK/dV kernel; for the dQ kernel two
  // sets, chosen per call (split_dq): dq_items, every row whole, and
  // dq_split_items / dq_splits, rows far longer than the rest in pieces.
  torch::Tensor row_items, row_splits, col_items, col_splits, dq_items, dq_split_items, dq_splits;
  int64_t n_row_pieces = 0, n_col_pieces = 0, n_dq_pieces = 0;
  // The longest row's visits, and all heads' row visits for one batch entry.
  int64_t dq_longest = 0, visits_per_batch = 0;
  int64_t seq_len = 0, n_tiles = 0;
  int64_t n_row_items() const { return row_items.size(1); }
  int64_t n_row_split() const { return row_splits.size(1); }
  int64_t n_col_items() const { return col_items.size(1); }
  int64_t n_split() const { return col_splits.size(1); }
  int64_t n_dq_split() const { return dq_splits.size(1); }
};

// Concatenates `layouts` (all of one seq_len) and their transposes into a plan
// on `device`; head h reads layouts[head_layout[h]].
SparseAttentionPlan make_plan(const std::vector<const TileLayout*>& layouts, const std::vector<int64_t>& head_layout,
                              const torch::Device& device);

// Whether the dQ kernel takes the split rows for a batch of B on a grid of
// `slots` resident CTAs: only when the longest row would outlast an even
// share of the work by half (Longformer's global rows at B = 1, H = 16:
// dQ 0.274 -> 0.220 ms at 16K; BigBird's, 1.2x an even share, ran 1-5% slower
// split, so stay whole).
bool split_dq(const SparseAttentionPlan& plan, int64_t B, int64_t slots);

// Whether this build has the CUDA kernels.
bool sparse_attention_cuda_built();

std::tuple<torch::Tensor, torch::Tensor> sparse_attention_cuda(const torch::Tensor& q, const torch::Tensor& k,
                                                               const torch::Tensor& v,
                                                               const SparseAttentionPlan& plan,
                                                               const torch::Tensor& exclude, double scale);

}  // namespace longtrain::kernels
