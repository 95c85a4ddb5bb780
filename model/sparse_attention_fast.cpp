// See sparse_attention_fast.h.
#include "model/sparse_attention_fast.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <optional>

#include "model/no_autocast.h"

namespace longtrain {

namespace {
constexpr int64_t kT = kernels::kTile;

uint64_t bit_range(int64_t lo, int64_t hi) {  // bits [lo, hi) of a 64-bit word
  const uint64_t upper = hi >= 64 ? ~0ull : (1ull << hi) - 1;
  return upper & ~((1ull << lo) - 1);
}
}  // namespace

kernels::TileLayout tile_layout(const BlockLayout& layout) {
  const int64_t L = layout.seq_len, b = layout.block, nt = (L + kT - 1) / kT;
  // Per query tile: key tile -> 64 row words.
  std::vector<std::map<int64_t, std::array<uint64_t, kT>>> tiles(static_cast<size_t>(nt));
  for (int64_t qb = 0; qb < layout.n_blocks; ++qb) {
    const int64_t q0 = qb * b, rows = std::min(b, L - q0);
    for (int64_t v = layout.row_ptr[qb]; v < layout.row_ptr[qb + 1]; ++v) {
      const int64_t k0 = layout.cols[v] * b, ncols = std::min(b, L - k0);
      const uint8_t* mask = layout.mask_index[v] < 0 ? nullptr : layout.masks.data() + layout.mask_index[v] * b * b;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t q = q0 + r;
        auto& row_tiles = tiles[static_cast<size_t>(q / kT)];
        // Cut the block's key range [k0, k0 + ncols) at tile boundaries.
        for (int64_t seg = k0; seg < k0 + ncols;) {
          const int64_t kt = seg / kT, end = std::min(k0 + ncols, (kt + 1) * kT);
          uint64_t bits = 0;
          if (!mask) {
            bits = bit_range(seg - kt * kT, end - kt * kT);
          } else {
            const uint8_t* m = mask + r * b + (seg - k0);
            for (int64_t k = seg; k < end; ++k, ++m) bits |= static_cast<uint64_t>(*m != 0) << (k - kt * kT);
          }
          if (bits) {
            auto it = row_tiles.find(kt);
            if (it == row_tiles.end()) it = row_tiles.emplace(kt, std::array<uint64_t, kT>{}).first;
            it->second[static_cast<size_t>(q % kT)] |= bits;
          }
          seg = end;
        }
      }
    }
  }
  kernels::TileLayout out;
  out.seq_len = L;
  out.n_tiles = nt;
  out.row_ptr.push_back(0);
  for (int64_t qt = 0; qt < nt; ++qt) {
    const int64_t rows_in = std::min(kT, L - qt * kT);
    for (const auto& [kt, words] : tiles[static_cast<size_t>(qt)]) {
      const uint64_t all_cols = bit_range(0, std::min(kT, L - kt * kT));
      bool full = true;
      for (int64_t r = 0; r < rows_in && full; ++r) full = words[static_cast<size_t>(r)] == all_cols;
      out.cols.push_back(static_cast<int32_t>(kt));
      if (full) {
        out.mask_of.push_back(-1);
      } else {
        out.mask_of.push_back(static_cast<int32_t>(out.masks.size() / kT));
        out.masks.insert(out.masks.end(), words.begin(), words.end());
      }
    }
    out.row_ptr.push_back(static_cast<int32_t>(out.cols.size()));
  }
  return out;
}

SparsePattern with_global_columns(SparsePattern base, int64_t first, int64_t block, bool causal) {
  SparsePattern p;
  auto allowed = base.allowed;
  p.allowed = [=](int64_t q, int64_t k) { return allowed(q, k) || (k < first && (!causal || k <= q)); };
  auto candidates = base.candidates;
  p.candidates = [=](int64_t qb) {
    auto c = candidates(qb);
    for (int64_t kb = 0; kb * block < first; ++kb) c.push_back(kb);
    return c;
  };
  return p;
}

SparsePattern with_global_rows(SparsePattern base, int64_t first, int64_t block, int64_t seq_len, bool causal) {
  SparsePattern p;
  auto allowed = base.allowed;
  p.allowed = [=](int64_t q, int64_t k) { return allowed(q, k) || (q < first && (!causal || k <= q)); };
  auto candidates = base.candidates;
  const int64_t n_blocks = (seq_len + block - 1) / block;
  p.candidates = [=](int64_t qb) {
    auto c = candidates(qb);
    if (qb * block < first) {
      for (int64_t kb = 0; kb < n_blocks; ++kb) c.push_back(kb);
    }
    return c;
  };
  return p;
}

SparsePattern without_rows(SparsePattern base, int64_t first) {
  auto allowed = base.allowed;
  base.allowed = [=](int64_t q, int64_t k) { return q >= first && allowed(q, k); };
  return base;
}

SparsePattern global_rows_pattern(int64_t first, int64_t block, int64_t seq_len, bool causal) {
  SparsePattern none{[](int64_t, int64_t) { return false; }, [](int64_t) { return std::vector<int64_t>(); }};
  return with_global_rows(none, first, block, seq_len, causal);
}

namespace {

// Global rows in the inputs' precision through SDPA (LibTorch's fused
// attention): G rows against all L keys, causal rows only up to themselves.
torch::Tensor global_rows(const torch::Tensor& out, const GlobalAttention& g, bool causal) {
  const int64_t B = out.size(0), H = out.size(1), L = out.size(2), D = out.size(3), G = g.index.size(1);
  auto idx = g.index.view({B, 1, G, 1}).expand({B, H, G, D});
  auto gq = g.q.gather(2, idx);  // [B, H, G, D]
  std::optional<torch::Tensor> mask;
  if (causal) mask = torch::arange(L, g.index.options()).view({1, 1, 1, L}) <= g.index.view({B, 1, G, 1});
  auto rows = torch::scaled_dot_product_attention(gq, g.k, g.v, mask).to(out.scalar_type());
  // Invalid (padding) entries keep the row already computed.
  rows = torch::where(g.valid.view({B, 1, G, 1}), rows, out.gather(2, idx));
  return out.scatter(2, idx, rows);
}

}  // namespace

std::string sparse_kernel_unsupported(const torch::Tensor& q) {
  if (!kernels::sparse_attention_cuda_built()) return "this build has no CUDA kernels";
  if (!q.is_cuda()) return "inputs are not on a CUDA device";
  if (q.scalar_type() != torch::kBFloat16 && q.scalar_type() != torch::kFloat16) {
    return "the kernel takes bf16 or fp16 (train.dtype bf16 on CUDA), got " + std::string(c10::toString(q.scalar_type()));
  }
  if (q.size(-1) != 64 && q.size(-1) != 128) return "head dim must be 64 or 128, got " + std::to_string(q.size(-1));
  return "";
}

torch::Tensor sparse_attention_fast(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const kernels::SparseAttentionPlan& plan, bool causal,
                                    const GlobalAttention* global, bool columns_in_plan,
                                    const kernels::SparseAttentionPlan* rows_plan) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  if (global && columns_in_plan && rows_plan) {
    auto o = std::get<0>(kernels::sparse_attention_cuda(q, k, v, plan, torch::Tensor(), scale));
    return o + std::get<0>(kernels::sparse_attention_cuda(global->q, global->k, global->v, *rows_plan, torch::Tensor(), scale));
  }
  if (!global || columns_in_plan) {
    auto o = std::get<0>(kernels::sparse_attention_cuda(q, k, v, plan, torch::Tensor(), scale));
    return global ? global_rows(o, *global, causal) : o;
  }
  // Per-batch global keys: out of the kernel's tiles, scored as dense columns.
  const int64_t G = global->index.size(1), nt = plan.n_tiles;
  auto is_global = torch::zeros({B, nt * kT}, global->index.options().dtype(torch::kInt64))
                       .scatter(1, global->index, global->valid.to(torch::kInt64));
  // [B, nt, 64] 0/1 -> one word per tile (distinct bits: the sum is an OR).
  auto shifts = torch::arange(kT, is_global.options());
  auto exclude = torch::bitwise_left_shift(is_global.view({B, nt, kT}), shifts).sum(-1).contiguous();
  auto [ow, lse_w] = kernels::sparse_attention_cuda(q, k, v, plan, exclude, scale);

  NoAutocast no_autocast;
  auto idx = global->index.view({B, 1, G, 1}).expand({B, H, G, D});
  auto gk = k.gather(2, idx).to(torch::kFloat32), gv = v.gather(2, idx).to(torch::kFloat32);
  auto s = torch::matmul(q.to(torch::kFloat32), gk.transpose(-1, -2)) * scale;  // [B, H, L, G]
  auto visible = global->valid.view({B, 1, 1, G});
  if (causal) visible = visible & (global->index.view({B, 1, 1, G}) <= torch::arange(L, global->index.options()).view({1, 1, L, 1}));
  s = s.masked_fill(visible.logical_not(), -INFINITY);
  auto lse_g = torch::logsumexp(s, -1);  // [B, H, L]
  auto lse = torch::logaddexp(lse_w, lse_g);
  // Rows with nothing visible at all keep 0 (cannot happen for causal rows, which see themselves).
  auto safe = torch::where(torch::isinf(lse), torch::zeros_like(lse), lse);
  auto w_window = torch::exp(lse_w - safe).unsqueeze(-1);
  auto p_global = torch::exp(s - safe.unsqueeze(-1));
  auto o = ow.to(torch::kFloat32) * w_window + torch::matmul(p_global, gv);
  return global_rows(o.to(q.scalar_type()), *global, causal);
}

}  // namespace longtrain
