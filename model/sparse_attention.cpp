// See sparse_attention.h.
#include "model/sparse_attention.h"

#include "model/no_autocast.h"

#include <cmath>
#include <limits>
#include <map>

namespace longtrain {
namespace {

using torch::indexing::Slice;

// Masked scores take the lowest finite value, not -inf: a row with nothing
// allowed (only padding rows, which are dropped) then gets a finite uniform
// softmax instead of NaNs that would leak into gradients.
constexpr float kMasked = std::numeric_limits<float>::lowest();

torch::Tensor pad_to_blocks(const torch::Tensor& x, int64_t padded_len) {
  const int64_t L = x.size(2);
  if (padded_len == L) return x;
  return torch::constant_pad_nd(x, {0, 0, 0, padded_len - L});  // pad dim 2 (sequence)
}

}  // namespace

LayoutTensors layout_tensors(const BlockLayout& layout, const torch::Device& device) {
  const int64_t nb = layout.n_blocks, b = layout.block;
  // Bucket query blocks by ceil(log2(visits)).
  std::map<int64_t, std::vector<int64_t>> buckets;
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t visits = layout.row_ptr[i + 1] - layout.row_ptr[i];
    int64_t width = 1;
    while (width < visits) width *= 2;
    buckets[width].push_back(i);
  }
  LayoutTensors out;
  out.block = b;
  out.n_blocks = nb;
  auto inverse = torch::empty({nb}, torch::kInt64);
  int64_t position = 0;
  for (const auto& [width, rows] : buckets) {
    (void)width;
    const int64_t n = static_cast<int64_t>(rows.size());
    int64_t m = 1;
    for (int64_t i : rows) m = std::max(m, layout.row_ptr[i + 1] - layout.row_ptr[i]);
    auto key_blocks = torch::zeros({n, m}, torch::kInt64);
    auto allowed = torch::zeros({n, b, m * b}, torch::kBool);
    auto kb_a = key_blocks.accessor<int64_t, 2>();
    auto al_a = allowed.accessor<bool, 3>();
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = rows[r];
      inverse[i] = position++;
      for (int64_t v = layout.row_ptr[i], slot = 0; v < layout.row_ptr[i + 1]; ++v, ++slot) {
        const int64_t kb = layout.cols[v];
        kb_a[r][slot] = kb;
        const int64_t keys = std::min(b, layout.seq_len - kb * b);
        const uint8_t* tile =
            layout.mask_index[v] < 0 ? nullptr : layout.masks.data() + layout.mask_index[v] * b * b;
        for (int64_t qr = 0; qr < b; ++qr)
          for (int64_t c = 0; c < keys; ++c) al_a[r][qr][slot * b + c] = tile ? tile[qr * b + c] != 0 : true;
      }
    }
    out.groups.push_back({torch::tensor(rows, torch::kInt64).to(device), key_blocks.to(device), allowed.to(device)});
  }
  out.order_inverse = inverse.to(device);
  return out;
}

std::pair<torch::Tensor, torch::Tensor> global_positions(const torch::Tensor& mask) {
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == torch::kBool, "global mask must be [B, L] bool, got ",
              mask.sizes(), " ", mask.scalar_type());
  const int64_t B = mask.size(0), L = mask.size(1);
  const int64_t G = std::max<int64_t>(1, mask.sum(1).max().item<int64_t>());
  // Stable sort puts global positions first, in order: [B, L] -> first G.
  auto order = torch::argsort(mask.logical_not().to(torch::kInt32), /*stable=*/true, /*dim=*/1, false);
  auto index = order.slice(1, 0, std::min(G, L));
  auto valid = mask.gather(1, index);
  (void)B;
  return {index, valid};
}

std::pair<torch::Tensor, torch::Tensor> first_global_positions(int64_t B, int64_t G, const torch::Device& device) {
  TORCH_CHECK(B > 0 && G > 0, "first_global_positions: B and G must be positive, got ", B, ", ", G);
  auto index = torch::arange(G, torch::dtype(torch::kInt64).device(device)).expand({B, G}).contiguous();
  return {index, torch::ones({B, G}, torch::dtype(torch::kBool).device(device))};
}

torch::Tensor apply_global_rows(const torch::Tensor& out, const GlobalAttention& global, bool causal) {
  // Global rows: full attention through the global projections, written over
  // the rows of global positions. [B, H, G, D] x [B, H, L, D] -> [B, H, G, L]
  NoAutocast no_autocast;
  const int64_t B = out.size(0), H = out.size(1), L = out.size(2), D = out.size(3), G = global.index.size(1);
  const auto acc = out.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto idx = global.index.view({B, 1, G, 1}).expand({B, H, G, D});
  auto gq = global.q.to(acc).gather(2, idx);
  auto s = torch::matmul(gq, global.k.to(acc).transpose(-1, -2)) * scale;
  if (causal) {
    auto keys = torch::arange(L, global.index.options()).view({1, 1, 1, L});
    s = s.masked_fill(keys > global.index.view({B, 1, G, 1}), kMasked);
  }
  auto rows = torch::matmul(torch::softmax(s, -1), global.v.to(acc)).to(out.scalar_type());  // [B, H, G, D]
  // Invalid (padding) entries keep the row already computed.
  auto keep = global.valid.view({B, 1, G, 1});
  rows = torch::where(keep, rows, out.gather(2, idx));
  return out.scatter(2, idx, rows);
}

torch::Tensor sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const std::vector<const LayoutTensors*>& per_head, bool causal,
                               const GlobalAttention* global) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "sparse_attention: q, k, v must be [B, H, L, D] of one shape, got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  TORCH_CHECK(static_cast<int64_t>(per_head.size()) == H, "sparse_attention: ", per_head.size(),
              " layouts for ", H, " heads");
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  NoAutocast no_autocast;  // fp32 scores and sums, also under bf16 autocast
  const auto dtype = q.scalar_type();
  // Accumulate in fp32 at least (fp64 stays fp64, for gradient checks).
  const auto acc = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto qf = q.to(acc), kf = k.to(acc), vf = v.to(acc);

  torch::Tensor key_is_global, gk, gv, gmask;  // global columns
  if (global) {
    const int64_t G = global->index.size(1);
    key_is_global = torch::zeros({B, L}, torch::dtype(torch::kBool).device(q.device()))
                        .scatter(1, global->index, global->valid);
    auto idx = global->index.view({B, 1, G, 1}).expand({B, H, G, D});
    gk = kf.gather(2, idx);  // [B, H, G, D]
    gv = vf.gather(2, idx);
    // [B, 1, L, G]: key g is visible to query t if valid (and, causal, g <= t).
    gmask = global->valid.view({B, 1, 1, G}).expand({B, 1, L, G});
    if (causal) {
      auto t = torch::arange(L, global->index.options()).view({1, 1, L, 1});
      gmask = gmask & (global->index.view({B, 1, 1, G}) <= t);
    }
  }

  // Heads sharing a layout are computed together.
  std::map<const LayoutTensors*, std::vector<int64_t>> groups;
  for (int64_t h = 0; h < H; ++h) groups[per_head[h]].push_back(h);
  auto out = torch::empty({B, H, L, D}, qf.options());
  for (const auto& [lt, heads] : groups) {
    TORCH_CHECK(lt->n_blocks * lt->block >= L && (lt->n_blocks - 1) * lt->block < L,
                "sparse_attention: layout of ", lt->n_blocks, " blocks of ", lt->block, " does not fit L = ", L);
    const int64_t nb = lt->n_blocks, b = lt->block, Hg = static_cast<int64_t>(heads.size());
    auto hidx = torch::tensor(heads, torch::kInt64).to(q.device());
    // [B, Hg, L, D] -> [B, Hg, nb, b, D]
    auto qb = pad_to_blocks(qf.index_select(1, hidx), nb * b).view({B, Hg, nb, b, D});
    auto kp = pad_to_blocks(kf.index_select(1, hidx), nb * b).view({B, Hg, nb, b, D});
    auto vp = pad_to_blocks(vf.index_select(1, hidx), nb * b).view({B, Hg, nb, b, D});
    torch::Tensor kig, gm, gkh, gvh;
    if (global) {
      kig = torch::constant_pad_nd(key_is_global, {0, nb * b - L}).view({B, nb, b});
      gm = torch::constant_pad_nd(gmask, {0, 0, 0, nb * b - L}).view({B, 1, nb, b, gk.size(2)});
      gkh = gk.index_select(1, hidx);
      gvh = gv.index_select(1, hidx);
    }
    std::vector<torch::Tensor> parts;
    for (const auto& rg : lt->groups) {
      const int64_t n = rg.query_blocks.size(0), m = rg.key_blocks.size(1);
      auto qg = qb.index_select(2, rg.query_blocks);  // [B, Hg, n, b, D]
      // Visited key blocks: [B, Hg, n * m, b, D] -> [B, Hg, n, m * b, D]
      auto flat = rg.key_blocks.reshape({-1});
      auto kg = kp.index_select(2, flat).view({B, Hg, n, m * b, D});
      auto vg = vp.index_select(2, flat).view({B, Hg, n, m * b, D});
      auto s = torch::matmul(qg, kg.transpose(-1, -2)) * scale;  // [B, Hg, n, b, m * b]
      auto allowed = rg.allowed.view({1, 1, n, b, m * b});
      if (global) {
        // Drop window visits of global keys: they are scored once, as global columns.
        auto visited_global = kig.index_select(1, flat).view({B, 1, n, 1, m * b});
        allowed = allowed & visited_global.logical_not();
      }
      s = s.masked_fill(allowed.logical_not(), kMasked);
      if (global) {
        const int64_t G = gk.size(2);
        auto sg = torch::matmul(qg.reshape({B, Hg, n * b, D}), gkh.transpose(-1, -2)) * scale;
        sg = sg.masked_fill(gm.index_select(2, rg.query_blocks).reshape({B, 1, n * b, G}).logical_not(), kMasked)
                 .view({B, Hg, n, b, G});
        auto p = torch::softmax(torch::cat({s, sg}, -1), -1);
        parts.push_back(torch::matmul(p.narrow(-1, 0, m * b), vg) +
                        torch::matmul(p.narrow(-1, m * b, G).reshape({B, Hg, n * b, G}), gvh).view({B, Hg, n, b, D}));
      } else {
        parts.push_back(torch::matmul(torch::softmax(s, -1), vg));  // [B, Hg, n, b, D]
      }
    }
    auto o = (parts.size() == 1 ? parts[0] : torch::cat(parts, 2)).index_select(2, lt->order_inverse);
    out.index_copy_(1, hidx, o.reshape({B, Hg, nb * b, D}).narrow(2, 0, L));
  }

  if (global) out = apply_global_rows(out, *global, causal);
  return out.to(dtype);
}

}  // namespace longtrain
