// Block-sparse softmax attention, the reference implementation: plain LibTorch
// ops, fp32 accumulation (fp64 inputs stay fp64), memory O(L * visited keys per query) — never an L x L
// matrix. It is the ground truth the fused CUDA kernels are checked against.
//
//   q, k, v: [B, H, L, D] -> out [B, H, L, D]
//   each head h reads layout per_head[h] (heads may share one); scores are
//   q.k / sqrt(D) over the (query, key) pairs the layout allows.
//
// Longformer global attention (optional): the positions in `global.index`
// ([B, G], with `global.valid` marking real entries since G varies per batch)
// are attended by every query (as extra dense columns, causal: only by later
// queries) using the ordinary q, k, v; and their own rows attend to every
// token (causal: every earlier one) through the separate global projections
// global.q, global.k, global.v ([B, H, L, D]). A global key that also lies in a
// query's window is counted once.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/block_layout.h"

namespace longtrain {

// A layout gathered into tensors on one device. Query blocks are grouped by
// how many key blocks they visit (rounded up to a power of two) and each group
// is padded only to its own widest row, so a few wide rows (BigBird's global
// blocks, which see everything) cost O(L) each instead of widening every row
// to L: total memory stays within 2x of the pairs the layout visits.
struct LayoutRowGroup {
  torch::Tensor query_blocks;  // [n] int64
  torch::Tensor key_blocks;    // [n, m] int64; padding visits point at block 0
  torch::Tensor allowed;       // [n, block, m * block] bool, tail and padding excluded
};
struct LayoutTensors {
  std::vector<LayoutRowGroup> groups;
  torch::Tensor order_inverse;  // [n_blocks]: where query block i lands in the groups' concatenation
  int64_t block = 0;
  int64_t n_blocks = 0;
};
LayoutTensors layout_tensors(const BlockLayout& layout, const torch::Device& device);

struct GlobalAttention {
  torch::Tensor index;  // [B, G] int64
  torch::Tensor valid;  // [B, G] bool
  torch::Tensor q, k, v;  // [B, H, L, D] global projections, for the global rows
};

torch::Tensor sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const std::vector<const LayoutTensors*>& per_head, bool causal,
                               const GlobalAttention* global = nullptr);

// Overwrites the rows of global positions of `out` ([B, H, L, D]) with full
// attention through the global projections (causal: over keys up to the row),
// computed in fp32 (fp64 for fp64 inputs).
torch::Tensor apply_global_rows(const torch::Tensor& out, const GlobalAttention& global, bool causal);

// [B, L] bool mask -> (index [B, G], valid [B, G]) with G the largest count in the batch.
// Reads G on the host: one device synchronisation.
std::pair<torch::Tensor, torch::Tensor> global_positions(const torch::Tensor& mask);

// The same for "the first G positions of every sequence" (Longformer's static
// globals), built without reading the device.
std::pair<torch::Tensor, torch::Tensor> first_global_positions(int64_t B, int64_t G, const torch::Device& device);

}  // namespace longtrain
