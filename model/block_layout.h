// Block layouts: the one description of every sparse attention pattern.
//
// The sequence is cut into blocks of `block` tokens (the last may be short).
// For each query block the layout lists, in increasing order, the key blocks it
// visits and whether the visit is *full* (every query may see every key) or
// *partial* (an element mask says which pairs are allowed; the mask is stored).
// Sliding windows (with dilation), BigBird and the Sparse-Transformer patterns
// are builders of this layout; the reference attention (sparse_attention.h) and
// the CUDA kernels read the same layout, so a new pattern is a new builder, not
// a new kernel. A layout is built once per (pattern, seq_len) and cached.
//
// Storage is CSR over query blocks: key blocks of query block i are
// cols[row_ptr[i] .. row_ptr[i+1]); partial visits index `masks`
// ([n_partial, block, block], row = query offset, column = key offset).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace longtrain {

struct BlockLayout {
  int64_t seq_len = 0;
  int64_t block = 0;
  int64_t n_blocks = 0;
  std::vector<int64_t> row_ptr;      // [n_blocks + 1]
  std::vector<int64_t> cols;         // key block per visit
  std::vector<int64_t> mask_index;   // per visit: -1 (full) or index into masks
  std::vector<uint8_t> masks;        // [n_partial, block, block]
  int64_t max_visits() const;        // most key blocks any query block visits
  int64_t visits() const { return static_cast<int64_t>(cols.size()); }
  int64_t allowed_pairs() const;     // (query, key) pairs computed, for FLOP counts
};

// An element-level pattern: allowed(q, k) for 0 <= q, k < seq_len, and the key
// blocks worth testing for query block qb (a superset of those with an allowed pair).
struct SparsePattern {
  std::function<bool(int64_t q, int64_t k)> allowed;
  std::function<std::vector<int64_t>(int64_t qb)> candidates;
};

// Builds the layout of `pattern` by testing each candidate block's elements.
BlockLayout build_layout(const SparsePattern& pattern, int64_t seq_len, int64_t block);

// Longformer sliding window. Causal: keys q - i*dilation for i in [0, window).
// Bidirectional: keys q + i*dilation for |i| <= window / 2.
SparsePattern sliding_pattern(int64_t seq_len, int64_t block, int64_t window, int64_t dilation, bool causal);

// BigBird (Zaheer et al. 2020) at block granularity: each query block sees
// `window_blocks` blocks around it (causal: itself and the ones before), the
// first `global_blocks` blocks (which in turn see everything, or everything
// before them when causal), and `random_blocks` others drawn from `seed` (causal:
// only from the past), identically on every machine.
SparsePattern bigbird_pattern(int64_t seq_len, int64_t block, int64_t window_blocks, int64_t global_blocks,
                              int64_t random_blocks, uint64_t seed, bool causal);

// Sparse Transformer (Child et al. 2019). strided: keys within `stride` of the
// query or a multiple of `stride` away. fixed: keys in the query's own stride-long
// segment, or in the last `summary` positions of any segment (causal: only earlier).
SparsePattern strided_pattern(int64_t seq_len, int64_t block, int64_t stride, bool causal);
SparsePattern fixed_pattern(int64_t seq_len, int64_t block, int64_t stride, int64_t summary, bool causal);

}  // namespace longtrain
