// Plain parameters of the block-sparse flash attention kernels (no torch types:
// this header is shared by op.cpp and the .cu files).
//
// Tensors are [B, H, L, D] addressed by element strides (the head dim is
// contiguous). The layout is the model's block layout re-cut into 64 x 64
// tiles (kTile): for layout l, query tile i visits key tiles
// tile_cols[tile_row_ptr[l * (n_tiles + 1) + i] ..  tile_row_ptr[... + i + 1]),
// each full (mask index -1) or partial (64 mask words, word r = query row r,
// bit c = key column c). The transposed (CSC) lists drive the dK/dV kernel.
// Both are cut into work items (a tile, or a piece of an overlong row or
// column). Grids are (batch * head, item): all heads of the heaviest start
// first.
// A per-batch exclusion word per key tile (optional) removes keys from every
// tile (Longformer global keys, which the caller scores once, densely).
#pragma once

#include <cstdint>

namespace longtrain::kernels {

constexpr int kTile = 64;
// A row (forward) or transposed column (dK/dV) is split when it has more
// than max(this, 2 x the layout's mean visits per row or column) visits.
constexpr int kMinSplitVisits = 16;
// dQ's rows, when split at all (op.h's split_dq): pieces past
// max(kDqMinSplitVisits, kDqSplitFactor x the mean).
constexpr int kDqSplitFactor = 8;
constexpr int kDqMinSplitVisits = 64;
// Resident CTAs per SM of the dQ kernel (its register cap): 3 at D = 64, 2 at 128.
constexpr int dq_ctas_per_sm(int D) { return D == 64 ? 3 : 2; }

// One kernel's work items, [n_layouts][n_items][kItemFields]: tile (-1 =
// none: the layout has fewer items than the grid), visits [begin, end) (row
// visits, or transposed ones for dK/dV), split slot (-1: the item is the
// whole row / column and writes its outputs; else a piece of a split one,
// which leaves partials that the slot's last piece to finish combines),
// piece (the piece's index among the layout's pieces, -1 for whole items),
// and the first visit's tile and mask index (0 and -1 when the item has no
// visit), so that a CTA's first copy waits on one load, not two (v8).
// Rows and columns much longer than the rest (global tokens: every tile
// visits them) are split so that no CTA walks them alone long after the rest
// of the grid has finished; items are heaviest first, so that the pieces
// start in the first wave.
// splits [n_layouts][n_split][kSplitFields]: tile (-1 = none), first piece,
// number of pieces.
constexpr int kItemFields = 7;
constexpr int kSplitFields = 3;
struct WorkItems {
  const int32_t* items = nullptr;
  const int32_t* splits = nullptr;
  int n_items = 0, n_split = 0, n_pieces = 0;
};

struct SparseLayoutParams {
  const int32_t* row_ptr = nullptr;    // [n_layouts * (n_tiles + 1)], offsets into cols
  const int32_t* cols = nullptr;       // key tile per visit
  const int32_t* row_mask = nullptr;   // mask index per visit, -1 = full
  const int32_t* col_ptr = nullptr;    // [n_layouts * (n_tiles + 1)], offsets into rows
  const int32_t* rows = nullptr;       // query tile per transposed visit
  const int32_t* col_mask = nullptr;   // mask index per transposed visit
  const uint64_t* masks = nullptr;     // [n_masks, 64]
  const int32_t* head_layout = nullptr;  // [H] -> layout index
  bool one_layout = false;               // every head reads layout 0 (no head_layout load)
  WorkItems row_work;  // the forward's: query tiles
  WorkItems col_work;  // the dK/dV kernel's: key tiles
  // The dQ kernel's: query tiles, longest first, whole or (op.h's split_dq)
  // with the far longer rows in pieces; a piece writes its fp32 partial to a
  // slot of its own (dq_part), summed in order by its last piece. (Pieces at the
  // forward's rule, adding by atomics, ran slower on BigBird: 16K
  // 0.331-0.336 -> 0.342-0.344 ms, 64K 1.37 -> 1.42-1.46.)
  WorkItems dq_work;
  const uint64_t* exclude = nullptr;   // [B, n_tiles] key-exclusion words, or null
  int n_tiles = 0;
};

struct SparseAttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // [B, H, L] natural-log logsumexp; -inf for rows with no key
  // Strides in elements: batch, head, row (the last dim is contiguous).
  int64_t q_strides[3], k_strides[3], v_strides[3], o_strides[3];
  int B = 0, H = 0, L = 0, D = 0;
  float scale = 0.f;
  SparseLayoutParams layout;
  // Split rows' partial softmax, [B * H, row_work.n_pieces]: unnormalised
  // output [64, D] and (running max in the log2 domain, sum) [2, 64], fp32;
  // null when no row is split.
  float* o_part = nullptr;
  float* ml_part = nullptr;
  // Zeroed [B * H, row_work.n_split] counts of a split row's finished pieces:
  // the piece that finishes last merges them (v8; a merge kernel before).
  int* row_done = nullptr;
};

struct SparseAttentionBwdParams {
  SparseAttentionParams fwd;  // q, k, v, o, lse as saved by the forward
  const void* dout = nullptr;
  const float* dlse = nullptr;  // [B, H, L] gradient of lse, or null
  float* delta = nullptr;       // [B, H, L] workspace: rowsum(dO * O) - dlse
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* dkv_acc = nullptr;  // [B * H, col_work.n_split, 2, 64, D] zeroed fp32 partials of split columns, or null
  float* dq_part = nullptr;  // [B * H, dq_work.n_pieces, 64, D] fp32 partials of split dQ rows (scaled), or null
  // Zeroed counts of finished pieces, [B * H, col_work.n_split] and
  // [B * H, dq_work.n_split]: a split column's or dQ row's last piece writes
  // the gradient rows out (v8; finishing kernels before).
  int* col_done = nullptr;
  int* dq_done = nullptr;
  int64_t do_strides[3], dq_strides[3], dk_strides[3], dv_strides[3];
};

enum class DType { kBFloat16, kFloat16 };

// Launchers (fwd.cu, bwd.cu): check the last CUDA error and throw with the
// kernel name on failure. `stream` is a cudaStream_t.
void sparse_attention_fwd(const SparseAttentionParams& p, DType dtype, void* stream);
void sparse_attention_bwd(const SparseAttentionBwdParams& p, DType dtype, void* stream);

}  // namespace longtrain::kernels
