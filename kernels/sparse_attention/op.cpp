// See op.h. The autograd glue: checks at the boundary, plain params for the
// kernels (params.h), launches on the current CUDA stream.
#include "kernels/sparse_attention/op.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "kernels/glue.h"
#include "kernels/sparse_attention/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {

namespace {

torch::Tensor int32_tensor(const std::vector<int32_t>& v, const torch::Device& device) {
  auto t = torch::empty({static_cast<int64_t>(v.size())}, torch::kInt32);
  std::copy(v.begin(), v.end(), t.data_ptr<int32_t>());
  return t.to(device);
}

// Work items (params.h) over the rows (ptr = row_ptr) or the transposed
// columns (ptr = col_ptr) of every layout: one per tile, except that a row or
// column far longer than the others (Longformer's and BigBird's global
// tokens: every tile visits them) is cut into pieces of about `cap` visits
// (one CTA walking 256 visits was half of the Longformer backward at 16K).
// Per layout, heaviest first; layouts with fewer items or splits are padded
// with tile = -1. The cap is max(min_visits, factor x the mean over all
// tiles, empty ones included: a layout of global rows alone, two tiles
// visiting everything, is cut into pieces of min_visits); factor 0: one item
// per tile. `tiles` and `masks` are the visits' tile and mask index (cols and
// row_mask for rows, rows and col_mask for columns): each item carries its
// first visit's.
struct WorkPlan {
  std::vector<int32_t> items, splits;
  int64_t n_items = 0, n_split = 0, n_pieces = 0;
};
WorkPlan work_items(const std::vector<int32_t>& ptr_all, const std::vector<int32_t>& tiles,
                    const std::vector<int32_t>& masks, int64_t n_layouts, int64_t nt, int factor, int min_visits) {
  using Item = std::array<int32_t, kItemFields>;
  using Split = std::array<int32_t, kSplitFields>;
  std::vector<std::vector<Item>> items_of(static_cast<size_t>(n_layouts));
  std::vector<std::vector<Split>> split_of(static_cast<size_t>(n_layouts));
  WorkPlan w;
  for (size_t l = 0; l < items_of.size(); ++l) {
    const int32_t* ptr = ptr_all.data() + l * static_cast<size_t>(nt + 1);
    const int64_t total = ptr[nt] - ptr[0];
    const int32_t cap = factor > 0 ? static_cast<int32_t>(std::max<int64_t>(min_visits, factor * ((total + nt - 1) / nt)))
                                   : std::numeric_limits<int32_t>::max();
    auto& items = items_of[l];
    int32_t piece = 0;
    for (int64_t j = 0; j < nt; ++j) {
      const auto tile = static_cast<int32_t>(j);
      const int32_t b = ptr[j], e = ptr[j + 1], n = e - b;
      auto item = [&](int32_t begin, int32_t end, int32_t slot, int32_t index) {
        const bool any = begin < end;
        items.push_back({tile, begin, end, slot, index, any ? tiles[static_cast<size_t>(begin)] : 0,
                         any ? masks[static_cast<size_t>(begin)] : -1});
      };
      if (n <= cap) {
        item(b, e, -1, -1);
        continue;
      }
      const int32_t pieces = (n + cap - 1) / cap, slot = static_cast<int32_t>(split_of[l].size());
      split_of[l].push_back({tile, piece, pieces});
      for (int32_t k = 0; k < pieces; ++k) item(b + n * k / pieces, b + n * (k + 1) / pieces, slot, piece++);
    }
    std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x[2] - x[1] > y[2] - y[1]; });
    w.n_items = std::max<int64_t>(w.n_items, static_cast<int64_t>(items.size()));
    w.n_split = std::max<int64_t>(w.n_split, static_cast<int64_t>(split_of[l].size()));
    w.n_pieces = std::max<int64_t>(w.n_pieces, piece);
  }
  for (size_t l = 0; l < items_of.size(); ++l) {
    items_of[l].resize(static_cast<size_t>(w.n_items), {-1, 0, 0, -1, -1, 0, -1});
    for (const auto& it : items_of[l]) w.items.insert(w.items.end(), it.begin(), it.end());
    split_of[l].resize(static_cast<size_t>(w.n_split), {-1, 0, 0});
    for (const auto& sp : split_of[l]) w.splits.insert(w.splits.end(), sp.begin(), sp.end());
  }
  return w;
}

}  // namespace

SparseAttentionPlan make_plan(const std::vector<const TileLayout*>& layouts, const std::vector<int64_t>& head_layout,
                              const torch::Device& device) {
  TORCH_CHECK(!layouts.empty(), "make_plan: no layouts");
  const int64_t nt = layouts[0]->n_tiles;
  std::vector<int32_t> row_ptr, cols, row_mask, col_ptr, rows, col_mask;
  std::vector<uint64_t> masks;
  for (const TileLayout* l : layouts) {
    TORCH_CHECK(l->n_tiles == nt && l->seq_len == layouts[0]->seq_len, "make_plan: layouts of different lengths");
    TORCH_CHECK(static_cast<int64_t>(l->row_ptr.size()) == nt + 1, "make_plan: row_ptr has ", l->row_ptr.size(),
                " entries for ", nt, " tiles");
    const int32_t visit0 = static_cast<int32_t>(cols.size());
    const int32_t mask0 = static_cast<int32_t>(masks.size() / kTile);
    for (int64_t i = 0; i <= nt; ++i) row_ptr.push_back(visit0 + l->row_ptr[i]);
    for (int64_t v = 0; v < l->visits(); ++v) {
      cols.push_back(l->cols[v]);
      row_mask.push_back(l->mask_of[v] < 0 ? -1 : mask0 + l->mask_of[v]);
    }
    masks.insert(masks.end(), l->masks.begin(), l->masks.end());
    // Transpose: for each key tile, the query tiles visiting it, in order.
    std::vector<std::vector<std::pair<int32_t, int32_t>>> by_col(nt);
    for (int64_t i = 0; i < nt; ++i) {
      for (int32_t v = l->row_ptr[i]; v < l->row_ptr[i + 1]; ++v) {
        by_col[l->cols[v]].emplace_back(static_cast<int32_t>(i), l->mask_of[v] < 0 ? -1 : mask0 + l->mask_of[v]);
      }
    }
    for (int64_t j = 0; j < nt; ++j) {
      col_ptr.push_back(static_cast<int32_t>(rows.size()));
      for (const auto& [r, m] : by_col[j]) {
        rows.push_back(r);
        col_mask.push_back(m);
      }
    }
    col_ptr.push_back(static_cast<int32_t>(rows.size()));
  }
  const auto n_layouts = static_cast<int64_t>(layouts.size());
  const WorkPlan row_work = work_items(row_ptr, cols, row_mask, n_layouts, nt, 2, kMinSplitVisits);
  const WorkPlan col_work = work_items(col_ptr, rows, col_mask, n_layouts, nt, 2, kMinSplitVisits);
  const WorkPlan dq_whole = work_items(row_ptr, cols, row_mask, n_layouts, nt, 0, 0);
  const WorkPlan dq_work = work_items(row_ptr, cols, row_mask, n_layouts, nt, kDqSplitFactor, kDqMinSplitVisits);
  TORCH_CHECK(nt < 65536 && std::max(row_work.n_items, col_work.n_items) < 65536, "make_plan: ", nt,
              " tiles exceed the grid limit (L < 4M)");
  TORCH_CHECK(masks.size() / kTile < static_cast<size_t>(std::numeric_limits<int32_t>::max()),
              "make_plan: too many partial tiles");
  SparseAttentionPlan p;
  p.seq_len = layouts[0]->seq_len;
  p.n_tiles = nt;
  p.row_ptr = int32_tensor(row_ptr, device);
  p.cols = int32_tensor(cols, device);
  p.row_mask = int32_tensor(row_mask, device);
  p.col_ptr = int32_tensor(col_ptr, device);
  p.rows = int32_tensor(rows, device);
  p.col_mask = int32_tensor(col_mask, device);
  auto m = torch::empty({static_cast<int64_t>(std::max<size_t>(masks.size(), 1))}, torch::kInt64);
  std::copy(masks.begin(), masks.end(), reinterpret_cast<uint64_t*>(m.data_ptr<int64_t>()));
  p.masks = m.to(device);
  std::vector<int32_t> hl(head_layout.begin(), head_layout.end());
  for (int32_t h : hl) TORCH_CHECK(h >= 0 && h < static_cast<int32_t>(layouts.size()), "make_plan: bad head layout ", h);
  p.head_layout = int32_tensor(hl, device);
  p.dq_items = int32_tensor(dq_whole.items, device).view({n_layouts, dq_whole.n_items, kItemFields});
  p.dq_split_items = int32_tensor(dq_work.items, device).view({n_layouts, dq_work.n_items, kItemFields});
  p.dq_splits = int32_tensor(dq_work.splits, device).view({n_layouts, dq_work.n_split, kSplitFields});
  p.n_dq_pieces = dq_work.n_pieces;
  p.row_items = int32_tensor(row_work.items, device).view({n_layouts, row_work.n_items, kItemFields});
  p.row_splits = int32_tensor(row_work.splits, device).view({n_layouts, row_work.n_split, kSplitFields});
  p.n_row_pieces = row_work.n_pieces;
  p.col_items = int32_tensor(col_work.items, device).view({n_layouts, col_work.n_items, kItemFields});
  p.col_splits = int32_tensor(col_work.splits, device).view({n_layouts, col_work.n_split, kSplitFields});
  p.n_col_pieces = col_work.n_pieces;
  for (int64_t l = 0; l < n_layouts; ++l) {
    for (int64_t j = 0; j < nt; ++j) {
      const size_t i = static_cast<size_t>(l * (nt + 1) + j);
      p.dq_longest = std::max<int64_t>(p.dq_longest, row_ptr[i + 1] - row_ptr[i]);
    }
  }
  for (int32_t h : hl) {
    const size_t i = static_cast<size_t>(h) * static_cast<size_t>(nt + 1);
    p.visits_per_batch += row_ptr[i + static_cast<size_t>(nt)] - row_ptr[i];
  }
  return p;
}

bool split_dq(const SparseAttentionPlan& plan, int64_t B, int64_t slots) {
  return plan.n_dq_split() > 0 && 2 * plan.dq_longest * slots > 3 * plan.visits_per_batch * B;
}

#ifndef LONGTRAIN_WITH_CUDA

bool sparse_attention_cuda_built() { return false; }

std::tuple<torch::Tensor, torch::Tensor> sparse_attention_cuda(const torch::Tensor&, const torch::Tensor&,
                                                               const torch::Tensor&, const SparseAttentionPlan&,
                                                               const torch::Tensor&, double) {
  TORCH_CHECK(false, "sparse_attention_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

bool sparse_attention_cuda_built() { return true; }

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

SparseLayoutParams layout_params(const SparseAttentionPlan& plan, const torch::Tensor& exclude, bool dq_split = false) {
  SparseLayoutParams l;
  l.row_ptr = plan.row_ptr.data_ptr<int32_t>();
  l.cols = plan.cols.data_ptr<int32_t>();
  l.row_mask = plan.row_mask.data_ptr<int32_t>();
  l.col_ptr = plan.col_ptr.data_ptr<int32_t>();
  l.rows = plan.rows.data_ptr<int32_t>();
  l.col_mask = plan.col_mask.data_ptr<int32_t>();
  l.masks = reinterpret_cast<const uint64_t*>(plan.masks.data_ptr<int64_t>());
  l.head_layout = plan.head_layout.data_ptr<int32_t>();
  l.one_layout = plan.row_items.size(0) == 1;
  auto work = [](const torch::Tensor& items, const torch::Tensor& splits, int64_t pieces) {
    WorkItems w;
    w.items = items.data_ptr<int32_t>();
    w.n_items = static_cast<int>(items.size(1));
    if (splits.defined() && splits.numel() > 0) {
      w.splits = splits.data_ptr<int32_t>();
      w.n_split = static_cast<int>(splits.size(1));
    }
    w.n_pieces = static_cast<int>(pieces);
    return w;
  };
  l.row_work = work(plan.row_items, plan.row_splits, plan.n_row_pieces);
  l.dq_work = dq_split ? work(plan.dq_split_items, plan.dq_splits, plan.n_dq_pieces) : work(plan.dq_items, {}, 0);
  l.col_work = work(plan.col_items, plan.col_splits, plan.n_col_pieces);
  l.exclude = exclude.defined() ? reinterpret_cast<const uint64_t*>(exclude.data_ptr<int64_t>()) : nullptr;
  l.n_tiles = static_cast<int>(plan.n_tiles);
  return l;
}

SparseAttentionPlan plan_from(AutogradContext* ctx) {
  SparseAttentionPlan p;
  auto& d = ctx->saved_data;
  p.row_ptr = d["row_ptr"].toTensor();
  p.cols = d["cols"].toTensor();
  p.row_mask = d["row_mask"].toTensor();
  p.col_ptr = d["col_ptr"].toTensor();
  p.rows = d["rows"].toTensor();
  p.col_mask = d["col_mask"].toTensor();
  p.masks = d["masks"].toTensor();
  p.head_layout = d["head_layout"].toTensor();
  p.dq_items = d["dq_items"].toTensor();
  p.dq_split_items = d["dq_split_items"].toTensor();
  p.dq_splits = d["dq_splits"].toTensor();
  p.n_dq_pieces = d["n_dq_pieces"].toInt();
  p.dq_longest = d["dq_longest"].toInt();
  p.visits_per_batch = d["visits_per_batch"].toInt();
  p.row_items = d["row_items"].toTensor();
  p.row_splits = d["row_splits"].toTensor();
  p.n_row_pieces = d["n_row_pieces"].toInt();
  p.col_items = d["col_items"].toTensor();
  p.col_splits = d["col_splits"].toTensor();
  p.n_col_pieces = d["n_col_pieces"].toInt();
  p.seq_len = d["seq_len"].toInt();
  p.n_tiles = d["n_tiles"].toInt();
  return p;
}

DType dtype_of(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
}

class SparseAttentionFunction : public torch::autograd::Function<SparseAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               const SparseAttentionPlan& plan, const torch::Tensor* exclude_or_null,
                               double scale) {
    // Passed by pointer: an undefined tensor among apply()'s tensor arguments is not allowed.
    const torch::Tensor exclude = exclude_or_null ? *exclude_or_null : torch::Tensor();
    q = rows_aligned(q);
    k = rows_aligned(k);
    v = rows_aligned(v);
    const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    // [B, L, H, D] storage: the mixer's transpose back to [B, L, H * D] is free.
    auto o = torch::empty({B, L, H, D}, q.options()).transpose(1, 2);
    auto lse = torch::empty({B, H, L}, q.options().dtype(torch::kFloat32));
    SparseAttentionParams p;
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.o = o.data_ptr();
    p.lse = lse.data_ptr<float>();
    set_strides(p.q_strides, q);
    set_strides(p.k_strides, k);
    set_strides(p.v_strides, v);
    set_strides(p.o_strides, o);
    p.B = static_cast<int>(B);
    p.H = static_cast<int>(H);
    p.L = static_cast<int>(L);
    p.D = static_cast<int>(D);
    p.scale = static_cast<float>(scale);
    p.layout = layout_params(plan, exclude);
    // Split rows' partial softmax (make_plan): every piece writes all of its;
    // and the zeroed counts of each split row's finished pieces.
    torch::Tensor part, done;
    if (plan.n_row_split() > 0) {
      part = torch::empty({B * H * plan.n_row_pieces * kTile * (D + 2)}, lse.options());
      p.o_part = part.data_ptr<float>();
      p.ml_part = p.o_part + B * H * plan.n_row_pieces * kTile * D;
      done = torch::zeros({B * H * plan.n_row_split()}, lse.options().dtype(torch::kInt32));
      p.row_done = done.data_ptr<int>();
    }
    const c10::cuda::CUDAGuard guard(q.device());
    sparse_attention_fwd(p, dtype_of(q), c10::cuda::getCurrentCUDAStream().stream());

    ctx->save_for_backward({q, k, v, o, lse});
    auto& d = ctx->saved_data;
    d["row_ptr"] = plan.row_ptr;
    d["cols"] = plan.cols;
    d["row_mask"] = plan.row_mask;
    d["col_ptr"] = plan.col_ptr;
    d["rows"] = plan.rows;
    d["col_mask"] = plan.col_mask;
    d["masks"] = plan.masks;
    d["head_layout"] = plan.head_layout;
    d["dq_items"] = plan.dq_items;
    d["dq_split_items"] = plan.dq_split_items;
    d["dq_splits"] = plan.dq_splits;
    d["n_dq_pieces"] = plan.n_dq_pieces;
    d["dq_longest"] = plan.dq_longest;
    d["visits_per_batch"] = plan.visits_per_batch;
    d["row_items"] = plan.row_items;
    d["row_splits"] = plan.row_splits;
    d["n_row_pieces"] = plan.n_row_pieces;
    d["col_items"] = plan.col_items;
    d["col_splits"] = plan.col_splits;
    d["n_col_pieces"] = plan.n_col_pieces;
    d["seq_len"] = plan.seq_len;
    d["n_tiles"] = plan.n_tiles;
    d["exclude"] = exclude.defined() ? exclude : torch::Tensor();
    d["has_exclude"] = exclude.defined();
    d["scale"] = scale;
    return {o, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto q = saved[0], k = saved[1], v = saved[2], o = saved[3], lse = saved[4];
    const auto plan = plan_from(ctx);
    torch::Tensor exclude = ctx->saved_data["has_exclude"].toBool() ? ctx->saved_data["exclude"].toTensor()
                                                                     : torch::Tensor();
    const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    torch::Tensor dout = grads[0].defined() ? rows_aligned(grads[0].to(q.scalar_type())) : torch::zeros_like(o);
    torch::Tensor dlse = grads[1].defined() ? grads[1].to(torch::kFloat32).contiguous() : torch::Tensor();
    auto dq = grad_like(q), dk = grad_like(k), dv = grad_like(v);
    auto delta = torch::empty({B, H, L}, q.options().dtype(torch::kFloat32));
    // Split dQ rows (when they would outlast the grid): every piece writes all of its fp32 partial.
    const int64_t slots = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * dq_ctas_per_sm(static_cast<int>(D));
    const bool dq_split = split_dq(plan, B, slots);
    torch::Tensor dq_part;
    if (dq_split) dq_part = torch::empty({B * H * plan.n_dq_pieces * kTile * D}, delta.options());
    // One zeroed buffer: the fp32 dK/dV partials of split columns (make_plan),
    // [B * H, n_split, 2, 64, D], summed by atomics; then the counts of
    // finished pieces per split column and per split dQ row (int32).
    const int64_t n_acc = B * H * plan.n_split() * 2 * kTile * D, n_col_done = B * H * plan.n_split();
    const int64_t n_dq_done = dq_split ? B * H * plan.n_dq_split() : 0;
    torch::Tensor zeroed;
    float* dkv_acc = nullptr;
    int *col_done = nullptr, *dq_done = nullptr;
    if (n_acc + n_col_done + n_dq_done > 0) {
      zeroed = torch::zeros({n_acc + n_col_done + n_dq_done}, delta.options());
      dkv_acc = n_acc > 0 ? zeroed.data_ptr<float>() : nullptr;
      col_done = n_col_done > 0 ? reinterpret_cast<int*>(zeroed.data_ptr<float>() + n_acc) : nullptr;
      dq_done = n_dq_done > 0 ? reinterpret_cast<int*>(zeroed.data_ptr<float>() + n_acc + n_col_done) : nullptr;
    }

    SparseAttentionBwdParams p;
    SparseAttentionParams& f = p.fwd;
    f.q = q.data_ptr();
    f.k = k.data_ptr();
    f.v = v.data_ptr();
    f.o = o.data_ptr();
    f.lse = lse.data_ptr<float>();
    set_strides(f.q_strides, q);
    set_strides(f.k_strides, k);
    set_strides(f.v_strides, v);
    set_strides(f.o_strides, o);
    f.B = static_cast<int>(B);
    f.H = static_cast<int>(H);
    f.L = static_cast<int>(L);
    f.D = static_cast<int>(D);
    f.scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    f.layout = layout_params(plan, exclude, dq_split);
    p.dout = dout.data_ptr();
    p.dlse = dlse.defined() ? dlse.data_ptr<float>() : nullptr;
    p.delta = delta.data_ptr<float>();
    p.dkv_acc = dkv_acc;
    p.col_done = col_done;
    p.dq_done = dq_done;
    p.dq_part = dq_part.defined() ? dq_part.data_ptr<float>() : nullptr;
    p.dq = dq.data_ptr();
    p.dk = dk.data_ptr();
    p.dv = dv.data_ptr();
    set_strides(p.do_strides, dout);
    set_strides(p.dq_strides, dq);
    set_strides(p.dk_strides, dk);
    set_strides(p.dv_strides, dv);
    const c10::cuda::CUDAGuard guard(q.device());
    sparse_attention_bwd(p, dtype_of(q), c10::cuda::getCurrentCUDAStream().stream());
    return {dq, dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor()};  // plan, exclude, scale: none
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> sparse_attention_cuda(const torch::Tensor& q, const torch::Tensor& k,
                                                               const torch::Tensor& v,
                                                               const SparseAttentionPlan& plan,
                                                               const torch::Tensor& exclude, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "sparse_attention_cuda: q, k, v must be [B, H, L, D] of one shape, got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
              "sparse_attention_cuda: q, k, v must be on one CUDA device, got ", q.device(), ", ", k.device(), ", ",
              v.device());
  TORCH_CHECK((q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat16) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "sparse_attention_cuda: q, k, v must all be bf16 or all fp16, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(q.size(3) == 64 || q.size(3) == 128, "sparse_attention_cuda: head dim must be 64 or 128, got ",
              q.size(3));
  const int64_t L = q.size(2), H = q.size(1);
  TORCH_CHECK(plan.seq_len == L, "sparse_attention_cuda: the plan is for L = ", plan.seq_len, ", inputs have L = ", L);
  TORCH_CHECK(plan.head_layout.numel() == H, "sparse_attention_cuda: the plan has ", plan.head_layout.numel(),
              " heads, inputs have ", H);
  TORCH_CHECK(plan.row_ptr.device() == q.device(), "sparse_attention_cuda: the plan is on ", plan.row_ptr.device(),
              ", inputs on ", q.device());
  TORCH_CHECK(L < (1 << 30) && q.size(0) * H < (1ll << 31), "sparse_attention_cuda: B * H = ", q.size(0) * H,
              " or L = ", L, " too large");
  if (exclude.defined()) {
    TORCH_CHECK(exclude.scalar_type() == torch::kInt64 && exclude.is_contiguous() && exclude.device() == q.device() &&
                    exclude.sizes() == torch::IntArrayRef({q.size(0), plan.n_tiles}),
                "sparse_attention_cuda: exclude must be contiguous int64 [B, n_tiles] = [", q.size(0), ", ",
                plan.n_tiles, "] on ", q.device(), ", got ", exclude.sizes(), " ", exclude.scalar_type());
  }
  auto out = SparseAttentionFunction::apply(q, k, v, plan, exclude.defined() ? &exclude : nullptr, scale);
  return {out[0], out[1]};
}

#endif

}  // namespace longtrain::kernels
