// The sparse family's fast path on CUDA: the model's block layouts re-cut into
// the kernels' 64 x 64 tiles, and block-sparse flash attention
// (kernels/sparse_attention) with Longformer's global tokens around it.
//
// Global tokens, as in the reference (sparse_attention.h): static "first k
// tokens" globals are all the kernel's work, their columns folded into the
// window's layout and their rows (their own q, k, v projections) a second
// launch on a layout of those rows alone; per-batch positions are excluded
// from the kernel's tiles and scored densely beside it, the two softmaxes
// merged through the kernel's logsumexp, and their rows go through SDPA in
// the inputs' precision.
#pragma once

#include <torch/torch.h>

#include <string>

#include "kernels/sparse_attention/op.h"
#include "model/block_layout.h"
#include "model/sparse_attention.h"

namespace longtrain {

// The layout in 64 x 64 tiles: a tile is full when every in-range pair is allowed.
kernels::TileLayout tile_layout(const BlockLayout& layout);

// Adds the columns of the first `first` tokens (causal: only for later queries).
SparsePattern with_global_columns(SparsePattern base, int64_t first, int64_t block, bool causal);

// Adds the rows of the first `first` tokens: they attend to every key (causal:
// every earlier one). For global tokens that share q, k, v with the window
// (no separate projections): with the columns too, the kernel alone computes
// all of Longformer's attention, its long rows split by make_plan.
SparsePattern with_global_rows(SparsePattern base, int64_t first, int64_t block, int64_t seq_len, bool causal);

// The rows of the first `first` tokens removed (they attend to nothing): the
// window layout of global tokens with their own projections, whose rows a
// second plan (global_rows_pattern) computes from those projections.
SparsePattern without_rows(SparsePattern base, int64_t first);

// Only the rows of the first `first` tokens, each attending to every key (causal: every earlier one).
SparsePattern global_rows_pattern(int64_t first, int64_t block, int64_t seq_len, bool causal);

// Why the kernel cannot take these inputs ("" when it can).
std::string sparse_kernel_unsupported(const torch::Tensor& q);

// q, k, v: [B, H, L, D] on CUDA, bf16/fp16. `columns_in_plan`: the global
// columns are part of the plan's layouts (only the global rows remain).
// `rows_plan` (static globals: columns in `plan` and the global rows out of
// it, without_rows): the global rows too go through the kernel, on
// global_rows_pattern's plan with global->q, k, v (index and valid unused);
// the two outputs, each zero where the other has its rows, are added.
torch::Tensor sparse_attention_fast(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const kernels::SparseAttentionPlan& plan, bool causal,
                                    const GlobalAttention* global, bool columns_in_plan,
                                    const kernels::SparseAttentionPlan* rows_plan = nullptr);

}  // namespace longtrain
