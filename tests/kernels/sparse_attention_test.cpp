// Block-sparse flash attention (kernels/sparse_attention) against the
// references, outputs and every gradient, by the rule
//   err(kernel, ref_fp32) <= 2 * err(ref_lowp, ref_fp32) + atol
// where ref_lowp is dense attention run in the kernel's dtype (bf16 / fp16)
// and ref_fp32 the same in fp32 on the same (rounded) inputs, itself checked
// against the model's sparse reference. Fresh random inputs per case, one
// shared random grad_out, outputs poisoned with NaN before every kernel run.
// Every pattern of the sparse family, causal and bidirectional, odd lengths,
// lengths that are not a multiple of the tile or window, B > 1, H > 1, head
// dims 64 and 128, one long case. The tile-layout tests run on CPU too.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "model/mixer.h"
#include "model/sparse_attention_fast.h"
#include "tests/host_sync.h"
#include "tests/model/attention_reference.h"
#include "trainer/device.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

using torch::Tensor;

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

// ---------------------------------------------------------------- tile layouts (CPU)

// The tile layout expanded to [L, L], as the kernel reads it.
Tensor tile_mask(const kernels::TileLayout& t) {
  const int64_t L = t.seq_len, T = kernels::kTile;
  auto m = torch::zeros({L, L}, torch::kBool);
  auto a = m.accessor<bool, 2>();
  for (int64_t qt = 0; qt < t.n_tiles; ++qt)
    for (int32_t v = t.row_ptr[qt]; v < t.row_ptr[qt + 1]; ++v)
      for (int64_t q = qt * T; q < std::min(L, qt * T + T); ++q)
        for (int64_t k = t.cols[v] * T; k < std::min(L, t.cols[v] * T + T); ++k)
          a[q][k] = t.mask_of[v] < 0 || ((t.masks[t.mask_of[v] * T + (q - qt * T)] >> (k - t.cols[v] * T)) & 1);
  return m;
}

struct PatternCase {
  std::string name;
  std::function<SparsePattern(int64_t L, int64_t block, bool causal)> make;
};

std::vector<PatternCase> patterns() {
  return {
      {"sliding_w100", [](int64_t L, int64_t b, bool c) { return sliding_pattern(L, b, 100, 1, c); }},
      {"sliding_w64_d3", [](int64_t L, int64_t b, bool c) { return sliding_pattern(L, b, 64, 3, c); }},
      {"bigbird_3_2_3", [](int64_t L, int64_t b, bool c) { return bigbird_pattern(L, b, 3, 2, 3, 7, c); }},
      {"strided_48", [](int64_t L, int64_t b, bool c) { return strided_pattern(L, b, 48, c); }},
      {"fixed_64_8", [](int64_t L, int64_t b, bool c) { return fixed_pattern(L, b, 64, 8, c); }},
      {"longformer_w128_g70",
       [](int64_t L, int64_t b, bool c) { return with_global_columns(sliding_pattern(L, b, 128, 1, c), 70, b, c); }},
  };
}

TEST(TileLayout, AllowsExactlyTheLayoutsPairs) {
  for (const auto& pc : patterns())
    for (int64_t block : {16, 64, 128})
      for (int64_t L : {37, 500, 640, 1031})
        for (bool causal : {true, false}) {
          const auto layout = build_layout(pc.make(L, block, causal), L, block);
          const auto tiles = tile_layout(layout);
          const std::string what = pc.name + " block=" + std::to_string(block) + " L=" + std::to_string(L) +
                                   (causal ? " causal" : " bidir");
          ASSERT_EQ(tiles.n_tiles, (L + 63) / 64) << what;
          const auto dense = tile_mask(tiles);
          ASSERT_TRUE(torch::equal(dense, layout_mask(layout))) << what;
          // Full tiles are full, partial ones are not, and no visit is empty.
          for (int64_t qt = 0; qt < tiles.n_tiles; ++qt)
            for (int32_t v = tiles.row_ptr[qt]; v < tiles.row_ptr[qt + 1]; ++v) {
              const int64_t rows = std::min<int64_t>(64, L - qt * 64), cols = std::min<int64_t>(64, L - tiles.cols[v] * 64);
              auto sub = dense.slice(0, qt * 64, qt * 64 + rows).slice(1, tiles.cols[v] * 64,
                                                                                tiles.cols[v] * 64 + cols);
              const int64_t n = sub.sum().item<int64_t>();
              ASSERT_GT(n, 0) << what << ": empty visit";
              ASSERT_EQ(tiles.mask_of[v] < 0, n == rows * cols) << what << ": full flag wrong at " << qt;
            }
        }
}

TEST(TileLayout, PlanTransposeListsTheSameVisits) {
  const int64_t L = 700;
  const auto a = tile_layout(build_layout(sliding_pattern(L, 64, 100, 2, true), L, 64));
  const auto b = tile_layout(build_layout(bigbird_pattern(L, 64, 3, 1, 2, 3, false), L, 64));
  const auto plan = kernels::make_plan({&a, &b}, {1, 0, 1}, torch::kCPU);
  auto row_ptr = plan.row_ptr, cols = plan.cols, col_ptr = plan.col_ptr, rows = plan.rows;
  const int64_t nt = plan.n_tiles;
  ASSERT_EQ(nt, 11);
  EXPECT_TRUE(torch::equal(plan.head_layout, torch::tensor({1, 0, 1}, torch::kInt32)));
  for (int64_t l = 0; l < 2; ++l) {
    auto dense = torch::zeros({nt, nt}, torch::kInt32), dense_t = torch::zeros({nt, nt}, torch::kInt32);
    for (int64_t i = 0; i < nt; ++i) {
      for (int64_t v = row_ptr[l * (nt + 1) + i].item<int>(); v < row_ptr[l * (nt + 1) + i + 1].item<int>(); ++v)
        dense[i][cols[v].item<int>()] += 1 + (plan.row_mask[v].item<int>() >= 0);
      for (int64_t v = col_ptr[l * (nt + 1) + i].item<int>(); v < col_ptr[l * (nt + 1) + i + 1].item<int>(); ++v)
        dense_t[rows[v].item<int>()][i] += 1 + (plan.col_mask[v].item<int>() >= 0);
    }
    EXPECT_TRUE(torch::equal(dense, dense_t)) << "layout " << l;
    EXPECT_GT(dense.sum().item<int>(), 0);
  }
}

// Work items (params.h) of one kind over `ptr` (row_ptr or col_ptr, with
// their visits' tiles and masks): every visit of every tile in exactly one
// item; a tile split exactly when split(layout, tile), its pieces sharing its
// slot and numbered within the slot's range of pieces; heaviest first; short
// layouts padded with -1; each item carrying its first visit's tile and mask.
void expect_work_items(const Tensor& items_t, const Tensor& splits_t, const Tensor& ptr_t, const Tensor& tiles_t,
                       const Tensor& masks_t, int64_t n_layouts, int64_t nt,
                       const std::function<bool(int64_t, int64_t)>& split) {
  const int64_t n = items_t.size(1), n_split = splits_t.size(1);
  ASSERT_EQ(items_t.size(2), kernels::kItemFields);
  ASSERT_EQ(splits_t.size(2), kernels::kSplitFields);
  auto items = items_t.accessor<int32_t, 3>();
  auto splits = splits_t.accessor<int32_t, 3>();
  auto ptr = ptr_t.accessor<int32_t, 1>();
  auto tiles = tiles_t.accessor<int32_t, 1>();
  auto masks = masks_t.accessor<int32_t, 1>();
  for (int64_t l = 0; l < n_layouts; ++l) {
    std::vector<int> covered(static_cast<size_t>(ptr[n_layouts * (nt + 1) - 1]), 0);
    std::vector<int> whole(static_cast<size_t>(nt), 0), in_slot(static_cast<size_t>(n_split), 0);
    int64_t prev = std::numeric_limits<int64_t>::max(), real = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t tile = items[l][i][0], b = items[l][i][1], e = items[l][i][2], slot = items[l][i][3];
      const int32_t piece = items[l][i][4];
      if (tile < 0) continue;
      ++real;
      if (b < e) {
        EXPECT_EQ(items[l][i][5], tiles[b]) << "layout " << l << " item " << i << ": first visit's tile";
        EXPECT_EQ(items[l][i][6], masks[b]) << "layout " << l << " item " << i << ": first visit's mask";
      }
      EXPECT_LE(e - b, prev) << "layout " << l << " item " << i << ": not heaviest first";
      prev = e - b;
      EXPECT_GE(b, ptr[l * (nt + 1) + tile]);
      EXPECT_LE(e, ptr[l * (nt + 1) + tile + 1]);
      for (int32_t v = b; v < e; ++v) covered[static_cast<size_t>(v)] += 1;
      if (slot < 0) {
        whole[static_cast<size_t>(tile)] += 1;
        EXPECT_EQ(piece, -1);
        continue;
      }
      ASSERT_LT(slot, n_split);
      in_slot[static_cast<size_t>(slot)] += 1;
      EXPECT_EQ(splits[l][slot][0], tile);
      EXPECT_GE(piece, splits[l][slot][1]);
      EXPECT_LT(piece, splits[l][slot][1] + splits[l][slot][2]);
    }
    for (int64_t j = 0; j < nt; ++j) {
      EXPECT_EQ(whole[static_cast<size_t>(j)], split(l, j) ? 0 : 1) << "layout " << l << " tile " << j;
      for (int32_t v = ptr[l * (nt + 1) + j]; v < ptr[l * (nt + 1) + j + 1]; ++v)
        EXPECT_EQ(covered[static_cast<size_t>(v)], 1) << "layout " << l << " visit " << v;
    }
    for (int64_t sl = 0; sl < n_split; ++sl) {
      if (splits[l][sl][0] < 0) continue;
      EXPECT_GE(splits[l][sl][2], 2);
      EXPECT_EQ(in_slot[static_cast<size_t>(sl)], splits[l][sl][2]) << "layout " << l << " slot " << sl;
    }
    EXPECT_GE(real, nt);
  }
}

// The dK/dV work items: a column is split only when far longer than the rest
// (the Longformer global column here: all 64 query tiles visit key tiles 0
// and 1); no row is (each visits its band and the two global tiles).
TEST(TileLayout, PlanSplitsOnlyTheLongColumns) {
  const int64_t L = 4096;
  const auto band = tile_layout(build_layout(sliding_pattern(L, 64, 128, 1, false), L, 64));
  const auto global = tile_layout(build_layout(with_global_columns(sliding_pattern(L, 64, 128, 1, false), 70, 64, false), L, 64));
  const auto plan = kernels::make_plan({&band, &global}, {0, 1}, torch::kCPU);
  const int64_t nt = plan.n_tiles;
  ASSERT_EQ(nt, 64);
  ASSERT_EQ(plan.n_split(), 2);  // key tiles 0 and 1 (keys 0..69 are global)
  EXPECT_EQ(plan.n_row_split(), 0);
  EXPECT_EQ(plan.n_row_items(), nt);
  expect_work_items(plan.col_items, plan.col_splits, plan.col_ptr, plan.rows, plan.col_mask, 2, nt,
                    [](int64_t l, int64_t j) { return l == 1 && j < 2; });
  expect_work_items(plan.row_items, plan.row_splits, plan.row_ptr, plan.cols, plan.row_mask, 2, nt,
                    [](int64_t, int64_t) { return false; });
  EXPECT_EQ(plan.col_splits[0][0][0].item<int>(), -1);  // the band layout splits nothing
}

// BigBird's global rows (query tiles 0 and 1 visit every key tile) are split
// for the forward and dQ kernels, as its global columns are for dK/dV.
TEST(TileLayout, PlanSplitsTheGlobalRows) {
  const int64_t L = 4096;
  const auto bigbird = tile_layout(build_layout(bigbird_pattern(L, 64, 3, 2, 3, 7, false), L, 64));
  const auto plan = kernels::make_plan({&bigbird}, {0}, torch::kCPU);
  const int64_t nt = plan.n_tiles;
  ASSERT_EQ(plan.n_row_split(), 2);
  EXPECT_GE(plan.n_row_pieces, 4);
  expect_work_items(plan.row_items, plan.row_splits, plan.row_ptr, plan.cols, plan.row_mask, 1, nt,
                    [](int64_t, int64_t j) { return j < 2; });
  expect_work_items(plan.col_items, plan.col_splits, plan.col_ptr, plan.rows, plan.col_mask, 1, nt,
                    [](int64_t, int64_t j) { return j < 2; });
  EXPECT_EQ(plan.row_items[0][0][3].item<int>() >= 0, true) << "the pieces of the long rows start first";
  // The dQ kernel's items: 64 visits is not far past the mean (kDqSplitFactor):
  // every row whole, the long ones first.
  EXPECT_EQ(plan.n_dq_split(), 0);
  expect_work_items(plan.dq_items, plan.dq_splits, plan.row_ptr, plan.cols, plan.row_mask, 1, nt,
                    [](int64_t, int64_t) { return false; });
  EXPECT_EQ(plan.dq_items.size(1), nt);
  EXPECT_LT(plan.dq_items[0][0][0].item<int>(), 2);
  EXPECT_LT(plan.dq_items[0][1][0].item<int>(), 2);
}

// Longformer's global rows in the plan (with_global_rows: tokens 0..69 see
// all 128 key tiles, the rest ~7): past kDqSplitFactor x the mean, so the dQ
// kernel splits them too; with_global_rows adds exactly those pairs.
TEST(TileLayout, PlanSplitsFarLongerRowsForDq) {
  const int64_t L = 8192;
  const auto window = with_global_columns(sliding_pattern(L, 64, 256, 1, false), 70, 64, false);
  const auto pattern = with_global_rows(window, 70, 64, L, false);
  for (int64_t q : {0, 69, 70, 4000})
    for (int64_t k : {0, 69, 70, 3999, 8191}) EXPECT_EQ(pattern.allowed(q, k), window.allowed(q, k) || q < 70) << q << " " << k;
  EXPECT_TRUE(with_global_rows(sliding_pattern(L, 64, 256, 1, true), 70, 64, L, true).allowed(69, 0));
  EXPECT_FALSE(with_global_rows(sliding_pattern(L, 64, 256, 1, true), 70, 64, L, true).allowed(0, 69));
  // Separate global projections: the window without the global rows and the
  // rows alone split these pairs between two plans, each pair in exactly one.
  const auto rest = without_rows(window, 70), rows = global_rows_pattern(70, 64, L, false);
  for (int64_t q : {0, 69, 70, 4000})
    for (int64_t k : {0, 69, 70, 3999, 4100, 8191}) {
      EXPECT_EQ(rest.allowed(q, k) + rows.allowed(q, k), pattern.allowed(q, k) ? 1 : 0) << q << " " << k;
    }
  EXPECT_FALSE(global_rows_pattern(70, 64, L, true).allowed(5, 6));
  EXPECT_TRUE(global_rows_pattern(70, 64, L, true).allowed(6, 5));
  const auto rows_tiles = tile_layout(build_layout(rows, L, 64));
  EXPECT_EQ(rows_tiles.visits(), 2 * (L / 64));  // tiles 0 and 1 visit every key tile, no other tile visits any
  // Its two long rows are split for the forward and for dQ (the mean counts the empty tiles).
  const auto rows_plan = kernels::make_plan({&rows_tiles}, {0}, torch::kCPU);
  EXPECT_EQ(rows_plan.n_row_split(), 2);
  EXPECT_EQ(rows_plan.n_row_pieces, 2 * (L / 64) / kernels::kMinSplitVisits);
  EXPECT_EQ(rows_plan.n_dq_split(), 2);
  expect_work_items(rows_plan.row_items, rows_plan.row_splits, rows_plan.row_ptr, rows_plan.cols, rows_plan.row_mask, 1,
                    rows_plan.n_tiles, [](int64_t, int64_t j) { return j < 2; });
  const auto tiles = tile_layout(build_layout(pattern, L, 64));
  const auto plan = kernels::make_plan({&tiles}, {0}, torch::kCPU);
  const int64_t nt = plan.n_tiles;
  EXPECT_EQ(tiles.row_ptr[1] - tiles.row_ptr[0], nt);
  ASSERT_EQ(plan.n_dq_split(), 2);
  EXPECT_GE(plan.n_dq_pieces, 4);
  expect_work_items(plan.dq_split_items, plan.dq_splits, plan.row_ptr, plan.cols, plan.row_mask, 1, nt,
                    [](int64_t, int64_t j) { return j < 2; });
  expect_work_items(plan.row_items, plan.row_splits, plan.row_ptr, plan.cols, plan.row_mask, 1, nt,
                    [](int64_t, int64_t j) { return j < 2; });
  EXPECT_GE(plan.dq_split_items[0][0][3].item<int>(), 0) << "the pieces of the long rows start first";
  expect_work_items(plan.dq_items, torch::zeros({1, 0, kernels::kSplitFields}, torch::kInt32), plan.row_ptr, plan.cols,
                    plan.row_mask, 1, nt, [](int64_t, int64_t) { return false; });
  // Which set a call takes: the longest row (128 visits) against an even
  // share of the batch's visits over the resident CTAs.
  EXPECT_EQ(plan.dq_longest, nt);
  EXPECT_EQ(plan.visits_per_batch, tiles.visits());
  const int64_t h100 = 132 * 3;
  EXPECT_TRUE(kernels::split_dq(plan, 1, h100));  // one batch entry of one head: a few CTAs would do all
  const int64_t b_whole = 2 * nt * h100 / (3 * tiles.visits()) + 1;  // from here an even share is 2/3 of a long row
  EXPECT_TRUE(kernels::split_dq(plan, b_whole - 1, h100));
  EXPECT_FALSE(kernels::split_dq(plan, b_whole, h100));
}

TEST(SparseKernel, SaysWhyItCannotRun) {
  auto cpu = torch::zeros({1, 1, 8, 64});
  EXPECT_NE(sparse_kernel_unsupported(cpu), "");
  if (!torch::cuda::is_available()) return;
  auto f32 = torch::zeros({1, 1, 8, 64}, torch::kCUDA);
  EXPECT_NE(sparse_kernel_unsupported(f32).find("bf16"), std::string::npos);
  auto d32 = torch::zeros({1, 1, 8, 32}, torch::dtype(torch::kBFloat16).device(torch::kCUDA));
  EXPECT_NE(sparse_kernel_unsupported(d32).find("head dim"), std::string::npos);
}

// ---------------------------------------------------------------- kernel vs references (GPU)

// kShared: the first 70 tokens global with the window's own q, k, v (no
// separate projections): rows and columns both in the kernel's plan.
enum class Globals { kNone, kFirst, kPerBatch, kShared };

struct KernelCase {
  std::string name;
  int64_t B, H, L, D;
  bool causal;
  torch::ScalarType dtype;
  Globals globals;
  int64_t block;
  std::function<SparsePattern(int64_t L, int64_t block, bool causal, int64_t head)> make;
  // The std of q and k (and the global q, k): 3 spreads the scaled scores
  // to a std of about 9, so that a row's max often grows by more than the
  // forward's rescale threshold (2^8) from one visit to the next.
  double spread = 1.0;
};

std::string case_name(const ::testing::TestParamInfo<KernelCase>& info) {
  const auto& c = info.param;
  return c.name + "_B" + std::to_string(c.B) + "_H" + std::to_string(c.H) + "_L" + std::to_string(c.L) + "_D" +
         std::to_string(c.D) + (c.causal ? "_causal" : "_bidir") + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp16");
}

// Allocates and frees NaN tensors of the outputs' sizes so the caching
// allocator hands those blocks back to the kernel's outputs: an element the
// kernel does not write stays NaN and fails the comparison.
void poison(int64_t B, int64_t H, int64_t L, int64_t D, torch::ScalarType dtype) {
  std::vector<Tensor> held;
  for (int i = 0; i < 4; ++i) held.push_back(torch::full({B, L, H, D}, NAN, torch::dtype(dtype).device(torch::kCUDA)));
  for (int i = 0; i < 2; ++i) held.push_back(torch::full({B, H, L}, NAN, torch::dtype(torch::kFloat32).device(torch::kCUDA)));
}

double max_err(const Tensor& a, const Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
}

class SparseKernelVsReference : public ::testing::TestWithParam<KernelCase> {};

TEST_P(SparseKernelVsReference, OutputAndGradientsWithinTwiceTheLowPrecisionError) {
  SKIP_WITHOUT_CUDA();
  const auto& c = GetParam();
  const auto dev = torch::Device(torch::kCUDA);
  torch::manual_seed(c.L * 31 + c.H);
  auto opt = torch::dtype(c.dtype).device(dev);
  // Inputs drawn in the low precision, so every run sees the same values.
  std::vector<Tensor> base;
  for (int i = 0; i < 6; ++i) base.push_back(torch::randn({c.B, c.H, c.L, c.D}, opt));
  for (int i : {0, 1, 3, 4}) base[i].mul_(c.spread);
  auto grad_out = torch::randn({c.B, c.H, c.L, c.D}, opt);

  // Per-head layouts; global positions.
  std::vector<BlockLayout> layouts;
  std::vector<Tensor> masks;
  for (int64_t h = 0; h < c.H; ++h) {
    layouts.push_back(build_layout(c.make(c.L, c.block, c.causal, h), c.L, c.block));
    masks.push_back(layout_mask(layouts.back()).to(dev));
  }
  Tensor gmask;
  if (c.globals == Globals::kFirst || c.globals == Globals::kShared) {
    gmask = torch::zeros({c.B, c.L}, torch::kBool);
    gmask.narrow(1, 0, 70).fill_(true);
  } else if (c.globals == Globals::kPerBatch) {
    gmask = torch::rand({c.B, c.L}) < 0.03;
    gmask[0][5] = true;
    gmask[c.B - 1][c.L - 1] = true;
  }
  if (gmask.defined()) gmask = gmask.to(dev);

  auto leaves = [&](torch::ScalarType t) {
    std::vector<Tensor> out;
    for (const auto& x : base) out.push_back(x.detach().to(t).requires_grad_());
    return out;
  };
  const bool shared = c.globals == Globals::kShared;
  const int g0 = shared ? 0 : 3;  // where the global q, k, v are among the leaves
  auto run_dense = [&](const std::vector<Tensor>& in) {
    return gmask.defined() ? dense_reference(in[0], in[1], in[2], masks, c.causal, gmask, in[g0], in[g0 + 1], in[g0 + 2])
                           : dense_reference(in[0], in[1], in[2], masks, c.causal);
  };
  auto grads = [&](const Tensor& out, const std::vector<Tensor>& in) {
    out.backward(grad_out.to(out.scalar_type()));
    std::vector<Tensor> g{out.detach()};
    const size_t n = gmask.defined() && !shared ? 6 : 3;
    for (size_t i = 0; i < n; ++i) g.push_back(in[i].grad());
    return g;
  };
  auto ref32_in = leaves(torch::kFloat32);
  const auto ref32 = grads(run_dense(ref32_in), ref32_in);
  auto lowp_in = leaves(c.dtype);
  const auto lowp = grads(run_dense(lowp_in), lowp_in);

  // The model's own reference agrees with the dense fp32 one.
  {
    std::vector<LayoutTensors> lt;
    std::vector<const LayoutTensors*> per_head;
    for (const auto& l : layouts) lt.push_back(layout_tensors(l, dev));
    for (const auto& t : lt) per_head.push_back(&t);
    auto in = leaves(torch::kFloat32);
    Tensor out;
    if (gmask.defined()) {
      GlobalAttention g;
      std::tie(g.index, g.valid) = global_positions(gmask);
      g.q = in[g0];
      g.k = in[g0 + 1];
      g.v = in[g0 + 2];
      out = sparse_attention(in[0], in[1], in[2], per_head, c.causal, &g);
    } else {
      out = sparse_attention(in[0], in[1], in[2], per_head, c.causal);
    }
    ASSERT_LT(max_err(out, ref32[0]), 1e-4) << "model reference vs dense";
  }

  // The kernel through the model's fast path.
  std::vector<kernels::TileLayout> tiles;
  std::vector<const kernels::TileLayout*> ptrs;
  std::vector<int64_t> head_layout;
  const bool columns_in_plan = c.globals == Globals::kFirst || shared;
  for (int64_t h = 0; h < c.H; ++h) {
    auto pattern = c.make(c.L, c.block, c.causal, h);
    if (columns_in_plan) pattern = with_global_columns(pattern, 70, c.block, c.causal);
    if (shared) pattern = with_global_rows(pattern, 70, c.block, c.L, c.causal);
    // The mixer's static globals: the global rows from their own q, k, v, a second plan.
    if (c.globals == Globals::kFirst) pattern = without_rows(pattern, 70);
    tiles.push_back(tile_layout(build_layout(pattern, c.L, c.block)));
    head_layout.push_back(h);
  }
  for (const auto& t : tiles) ptrs.push_back(&t);
  const auto plan = kernels::make_plan(ptrs, head_layout, dev);
  const auto rows_tiles = tile_layout(build_layout(global_rows_pattern(70, c.block, c.L, c.causal), c.L, c.block));
  const auto rows_plan = kernels::make_plan({&rows_tiles}, std::vector<int64_t>(c.H, 0), dev);
  // The cases named for a split exercise it (make_plan's rule decides).
  if (c.name.find("split_rows") != std::string::npos) {
    ASSERT_GT(plan.n_row_split(), 0);
  }
  if (c.name.find("first70_split") != std::string::npos) {
    ASSERT_GT(plan.n_split(), 0);
  }
  if (c.name.find("split_dq") != std::string::npos) {  // and the backward takes them on any GPU of 20 SMs or more
    ASSERT_GT(plan.n_dq_split(), 0);
    ASSERT_TRUE(kernels::split_dq(plan, c.B, 20 * kernels::dq_ctas_per_sm(static_cast<int>(c.D))));
  }
  GlobalAttention g;
  auto kin = leaves(c.dtype);
  if (gmask.defined() && !shared) {
    std::tie(g.index, g.valid) = global_positions(gmask);
    g.q = kin[3];
    g.k = kin[4];
    g.v = kin[5];
  }
  for (int run = 0; run < 2; ++run) {  // twice: a result that moves between runs is a race
    for (auto& t : kin)
      if (t.grad().defined()) t.grad().zero_();
    poison(c.B, c.H, c.L, c.D, c.dtype);
    auto out = sparse_attention_fast(kin[0], kin[1], kin[2], plan, c.causal,
                                     gmask.defined() && !shared ? &g : nullptr, columns_in_plan,
                                     c.globals == Globals::kFirst ? &rows_plan : nullptr);
    const auto got = grads(out, kin);
    const char* names[] = {"out", "dq", "dk", "dv", "d global q", "d global k", "d global v"};
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_FALSE(torch::isnan(got[i]).any().item<bool>()) << names[i] << ": NaN (unwritten or poisoned)";
      const double e_kernel = max_err(got[i], ref32[i]), e_lowp = max_err(lowp[i], ref32[i]);
      const double scale = ref32[i].abs().max().item<double>();
      EXPECT_LE(e_kernel, 2 * e_lowp + 1e-3 * std::max(1.0, scale))
          << names[i] << ": kernel err " << e_kernel << " vs low-precision reference err " << e_lowp
          << " (max |ref| " << scale << ")";
    }
  }
}

std::vector<KernelCase> kernel_cases() {
  const auto bf16 = torch::kBFloat16, fp16 = torch::kFloat16;
  auto sliding = [](int64_t w) {
    return [w](int64_t L, int64_t b, bool c, int64_t) { return sliding_pattern(L, b, w, 1, c); };
  };
  auto dilated = [](int64_t L, int64_t b, bool c, int64_t h) { return sliding_pattern(L, b, 64, 1 + h, c); };
  auto bigbird = [](int64_t L, int64_t b, bool c, int64_t) { return bigbird_pattern(L, b, 3, 2, 3, 11, c); };
  auto strided = [](int64_t L, int64_t b, bool c, int64_t) { return strided_pattern(L, b, 48, c); };
  auto fixed = [](int64_t L, int64_t b, bool c, int64_t) { return fixed_pattern(L, b, 64, 8, c); };
  return {
      {"sliding_w100", 2, 3, 999, 64, true, bf16, Globals::kNone, 64, sliding(100)},
      {"sliding_w128", 1, 2, 777, 128, false, bf16, Globals::kNone, 64, sliding(128)},
      {"sliding_w8_short", 3, 1, 37, 64, true, bf16, Globals::kNone, 64, sliding(8)},
      {"sliding_w40_block16", 1, 2, 301, 64, false, fp16, Globals::kNone, 16, sliding(40)},
      {"dilated_w64_d123", 2, 3, 1031, 64, true, fp16, Globals::kNone, 64, dilated},
      {"dilated_w64_d123", 1, 3, 640, 128, false, bf16, Globals::kNone, 64, dilated},
      {"bigbird_3_2_3", 2, 2, 1024, 64, true, bf16, Globals::kNone, 64, bigbird},
      {"bigbird_3_2_3_block128", 1, 2, 1280, 128, false, bf16, Globals::kNone, 128, bigbird},
      {"strided_48", 1, 2, 500, 64, true, bf16, Globals::kNone, 64, strided},
      {"fixed_64_8", 2, 1, 640, 64, false, fp16, Globals::kNone, 64, fixed},
      {"longformer_first70", 2, 2, 1100, 64, false, bf16, Globals::kFirst, 64, sliding(256)},
      {"longformer_first70", 1, 2, 700, 128, true, bf16, Globals::kFirst, 64, sliding(128)},
      // 33 query tiles on the global key tiles: split columns (make_plan) at D = 128
      {"longformer_first70_split", 1, 2, 2100, 128, true, fp16, Globals::kFirst, 64, sliding(128)},
      {"longformer_per_batch", 2, 2, 900, 64, true, bf16, Globals::kPerBatch, 64, sliding(128)},
      // Global rows in the plan: 35 tiles, the global row tiles split for the
      // forward and walked whole by dQ; 79 and 74 tiles, split for dQ too
      {"longformer_shared_split_rows", 2, 2, 2200, 64, false, bf16, Globals::kShared, 64, sliding(256)},
      {"longformer_shared_split_rows_split_dq", 1, 2, 5000, 64, false, bf16, Globals::kShared, 64, sliding(128)},
      {"longformer_shared_split_rows_split_dq", 1, 2, 4700, 128, false, fp16, Globals::kShared, 64, sliding(128)},
      {"longformer_shared", 1, 3, 1000, 64, true, bf16, Globals::kShared, 64, sliding(128)},
      {"longformer_per_batch", 2, 1, 513, 64, false, fp16, Globals::kPerBatch, 64, sliding(100)},
      {"long_sliding_w512", 1, 4, 4096, 64, true, bf16, Globals::kNone, 64, sliding(512)},
      // 40 and 33 tiles: BigBird's global rows (forward, dQ) and columns split (make_plan)
      {"bigbird_split_rows", 2, 2, 2500, 64, false, bf16, Globals::kNone, 64, bigbird},
      {"bigbird_split_rows", 1, 2, 2100, 128, false, fp16, Globals::kNone, 64, bigbird},
      // Peaked scores: the forward's conditional rescale taken and skipped
      // within rows, split rows' merge included
      {"peaked_sliding_w512", 1, 2, 2000, 64, true, bf16, Globals::kNone, 64, sliding(512), 3.0},
      {"peaked_longformer_shared_split_rows", 1, 2, 2200, 128, false, fp16, Globals::kShared, 64, sliding(256), 3.0},
  };
}

// ---------------------------------------------------------------- the mixers on the kernel (GPU)

Mixer make_mixer(const std::string& yaml, bool causal) {
  Section s(YAML::Load(yaml), "model.mixer", "test", YAML::Node(YAML::NodeType::Map));
  MixerDims dims;
  dims.d_model = 256;
  dims.n_heads = 4;
  dims.n_layers = 1;
  dims.max_positions = 4096;
  dims.causal = causal;
  return build_mixer(parse_mixer(s), dims);
}

// impl: auto on CUDA in bf16 takes the kernel and computes what impl: reference
// computes (to bf16 noise), forward and backward, for every family and both
// kinds of global tokens; impl: cuda refuses fp32 with a reason.
TEST(SparseKernel, MixersTakeItUnderBf16AutocastAndMatchTheReference) {
  SKIP_WITHOUT_CUDA();
  const auto dev = torch::Device(torch::kCUDA);
  const std::vector<std::string> yamls = {
      "{type: sliding, window: 96}",
      "{type: sliding, window: [[64, 64, 128, 128]], dilation: [[1, 2, 1, 2]], global_first: 5}",
      "{type: sliding, window: 64, global_token: 3}",
      "{type: bigbird, block: 64}",
      "{type: sparse, pattern: fixed, stride: 64}",
  };
  for (const auto& yaml : yamls)
    for (bool causal : {true, false}) {
      const std::string what = yaml + (causal ? " causal" : " bidir");
      torch::manual_seed(3);
      auto fast = make_mixer(yaml, causal), ref = make_mixer(yaml.substr(0, yaml.size() - 1) + ", impl: reference}", causal);
      fast->to(dev);
      ref->to(dev);
      {
        torch::NoGradGuard no_grad;
        auto src = fast->parameters(), dst = ref->parameters();
        for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
      }
      const int64_t B = 2, L = 640;
      auto x = torch::randn({B, L, 256}, dev);
      MixerContext ctx;
      ctx.tokens = torch::randint(0, 8, {B, L}, torch::dtype(torch::kInt64).device(dev));
      std::vector<Tensor> outs, grads;
      for (auto* m : {&fast, &ref}) {
        auto xi = x.clone().requires_grad_();
        Tensor y;
        {
          AutocastGuard autocast(dev, true);
          y = (*m)->forward(xi, ctx);
        }
        y.to(torch::kFloat32).square().sum().backward();
        outs.push_back(y.to(torch::kFloat32));
        grads.push_back(xi.grad());
      }
      const double scale = outs[1].abs().max().item<double>(), gscale = grads[1].abs().max().item<double>();
      EXPECT_LT(max_err(outs[0], outs[1]), 3e-2 * scale) << what;
      EXPECT_LT(max_err(grads[0], grads[1]), 3e-2 * gscale) << what;
    }
  auto strict = make_mixer("{type: sliding, window: 16, impl: cuda}", true);
  strict->to(dev);
  MixerContext ctx;
  try {
    strict->forward(torch::randn({1, 64, 256}, dev), ctx);
    FAIL() << "impl: cuda ran in fp32";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}

// The Longformer recipe's top layer (recipes/longformer.yaml: window 96,
// heads 3 and 4 dilated by 2, block 32, 8 static global tokens with their own
// q, k, v): the kernel path under bf16 autocast against the reference in
// fp32, beside the reference under bf16 autocast, for the output, the
// input's gradient and every parameter's gradient, by the 2x rule. (The
// test above bounds only the output and the input's gradient, loosely; the
// end-to-end Longformer run drifted from the bf16 reference by more than the
// bf16 reference drifts from fp32: NOTES.md, v7.)
TEST(SparseKernel, LongformerMixerGradientsWithinTwiceTheBf16ReferenceError) {
  SKIP_WITHOUT_CUDA();
  const auto dev = torch::Device(torch::kCUDA);
  const std::string yaml = "{type: sliding, window: 96, dilation: [[1, 1, 2, 2]], block: 32, global_first: 8";
  for (bool causal : {true, false}) {
    torch::manual_seed(5);
    auto fast = make_mixer(yaml + "}", causal), ref = make_mixer(yaml + ", impl: reference}", causal);
    fast->to(dev);
    ref->to(dev);
    {
      torch::NoGradGuard no_grad;
      auto src = fast->parameters(), dst = ref->parameters();
      ASSERT_EQ(src.size(), dst.size());
      for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
    }
    const int64_t B = 2, L = 1000;
    const auto x = torch::randn({B, L, 256}, dev), g = torch::randn({B, L, 256}, dev);
    MixerContext ctx;
    // Output, input gradient, then each parameter's gradient, in fp32.
    auto run = [&](Mixer& m, bool bf16) {
      m->zero_grad();
      auto xi = x.clone().requires_grad_();
      Tensor y;
      {
        AutocastGuard autocast(dev, bf16);
        y = m->forward(xi, ctx);
      }
      y.to(torch::kFloat32).backward(g);
      std::vector<Tensor> r = {y.detach().to(torch::kFloat32), xi.grad()};
      for (const auto& p : m->parameters()) r.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
      return r;
    };
    const auto exact = run(ref, false), low = run(ref, true), got = run(fast, true);
    std::vector<std::string> names = {"out", "dx"};
    for (const auto& np : ref->named_parameters()) names.push_back("d " + np.key());
    ASSERT_EQ(got.size(), names.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const double scale = exact[i].abs().max().item<double>();
      EXPECT_GT(scale, 0.0) << names[i] << (causal ? " causal" : " bidir");
      EXPECT_LE(max_err(got[i], exact[i]), 2 * max_err(low[i], exact[i]) + 1e-3 * scale)
          << names[i] << (causal ? " causal" : " bidir") << ": bf16 reference's error " << max_err(low[i], exact[i]);
    }
  }
}

// A training step of the window mixer, with or without static ("first k")
// global tokens, never reads the device from the host: CUDA's sync debug mode
// makes such a read an error. Token-id globals must read their largest count
// (global_positions), which shows that the check bites.
TEST(SparseKernel, StaticGlobalsStepWithoutHostSynchronisation) {
  SKIP_WITHOUT_CUDA();
  const auto dev = torch::Device(torch::kCUDA);
  for (const std::string yaml : {"{type: sliding, window: 64, global_first: 5}", "{type: sliding, window: 64}",
                                 "{type: sliding, window: 64, global_token: 3}"}) {
    auto m = make_mixer(yaml, true);
    m->to(dev);
    auto x = torch::randn({2, 640, 256}, dev).requires_grad_();
    MixerContext ctx;
    ctx.tokens = torch::randint(0, 8, {2, 640}, torch::dtype(torch::kInt64).device(dev));
    auto step = [&] {
      Tensor y;
      {
        AutocastGuard autocast(dev, true);
        y = m->forward(x, ctx);
      }
      y.to(torch::kFloat32).sum().backward();
    };
    step();  // builds and caches the tile plan (host-to-device copies)
    const bool must_sync = yaml.find("global_token") != std::string::npos;
    const std::string error = testing::host_sync_error(step);
    if (must_sync) EXPECT_NE(error, "") << yaml << ": the sync check did not fire";
    else EXPECT_EQ(error, "") << yaml;
  }
}

INSTANTIATE_TEST_SUITE_P(Patterns, SparseKernelVsReference, ::testing::ValuesIn(kernel_cases()), case_name);

}  // namespace
}  // namespace longtrain
