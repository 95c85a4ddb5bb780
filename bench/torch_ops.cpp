// longtrain's sparse attention as PyTorch operators, for the peer benchmark
// (bench/sparse_attention.py) only: it loads this library with
// torch.ops.load_library and times longtrain beside FlexAttention and SDPA on
// the same tensors in the same process.
//
//   torch.ops.longtrain.sparse_attention(q, k, v, pattern, window, global_first, causal)
//     q, k, v: [B, H, L, D] bf16/fp16 CUDA; pattern: "sliding" | "bigbird"
//     (block 128, 3 window + 2 global + 3 random blocks); global_first: the
//     first tokens attend and are attended everywhere (global rows through
//     gq, gk, gv when given — Longformer's separate projections, the rows a
//     second kernel launch, as the mixer does — else with q, k, v, rows and
//     columns in the kernel's one plan).
//   torch.ops.longtrain.bigbird_blocks(L, causal) -> [nb, nb] bool, the block
//     layout above, so the peer runs the same pattern.
//   torch.ops.longtrain.linear_attention(φq, φk, v, decay=None, normalize=True, eps=1e-6)
//     causal chunked linear attention (kernels/linear_attention/op.h), [B, H, L, D] bf16.
//   torch.ops.longtrain.aft_simple(q, k, v, chunk=0) -> causal AFT-simple (kernels/aft; chunk 0: its choice),
//     q, k, v: [B, L, d] bf16/fp16 CUDA (bench/aft.py).
//   torch.ops.longtrain.aft_band(q, k, v, u, window) -> causal AFT-local/conv,
//     u: [H, window] the banded relative bias (bench/aft.py).
//   torch.ops.longtrain.aft_full(q, k, v, w, causal, block) -> AFT-full, blocked
//     GEMMs (kernels/aft/full_op.cpp), w: [P, P] the pairwise bias (bench/aft.py).
//   torch.ops.longtrain.aft_full_default_block(L) -> the block aft_full runs with block = 0.
//   torch.ops.longtrain.add_norm(x, branch, weight, bias) -> LayerNorm(x + branch)
//     (kernels/norm; bias None: RMSNorm), for bench/kernel_breakdown.py.
//   torch.ops.longtrain.gelu_mlp(x, w1, b1, w2, b2) -> proj(gelu_tanh(fc(x))) on
//     cuBLASLt epilogues (kernels/mlp), for bench/kernel_breakdown.py.
#include <torch/library.h>
#include <torch/torch.h>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>

#include "kernels/aft/op.h"
#include "kernels/linear_attention/op.h"
#include "kernels/mlp/op.h"
#include "kernels/norm/op.h"
#include "model/sparse_attention_fast.h"

namespace longtrain {
namespace {

constexpr int64_t kBigBirdBlock = 128;

SparsePattern bench_pattern(const std::string& pattern, int64_t L, int64_t block, int64_t window, bool causal) {
  if (pattern == "sliding") return sliding_pattern(L, block, window, 1, causal);
  TORCH_CHECK(pattern == "bigbird", "pattern must be sliding or bigbird, got ", pattern);
  return bigbird_pattern(L, kBigBirdBlock, 3, 2, 3, 0, causal);
}

// Which plan of a pattern with global tokens: the window and the global rows
// and columns in one (shared q, k, v), or, for separate global projections,
// the window with the columns but without the rows, and the rows alone.
enum class Part { kAll, kWindowColumns, kGlobalRows };

const kernels::SparseAttentionPlan& cached_plan(const std::string& pattern, int64_t L, int64_t H, int64_t window,
                                                int64_t global_first, Part part, bool causal,
                                                const torch::Device& device) {
  static std::mutex mu;
  static std::map<std::tuple<std::string, int64_t, int64_t, int64_t, int64_t, Part, bool, std::string>,
                  kernels::SparseAttentionPlan>
      plans;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(pattern, L, H, window, global_first, part, causal, device.str());
  auto it = plans.find(key);
  if (it == plans.end()) {
    const int64_t block = pattern == "bigbird" ? kBigBirdBlock : 64, first = std::min(global_first, L);
    auto p = part == Part::kGlobalRows ? global_rows_pattern(first, block, L, causal)
                                       : bench_pattern(pattern, L, block, window, causal);
    if (first > 0 && part != Part::kGlobalRows) p = with_global_columns(p, first, block, causal);
    if (first > 0 && part == Part::kAll) p = with_global_rows(p, first, block, L, causal);
    if (first > 0 && part == Part::kWindowColumns) p = without_rows(p, first);
    const auto tiles = tile_layout(build_layout(p, L, block));
    it = plans.emplace(key, kernels::make_plan({&tiles}, std::vector<int64_t>(H, 0), device)).first;
  }
  return it->second;
}

torch::Tensor sparse_attention_op(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const std::string& pattern, int64_t window, int64_t global_first, bool causal,
                                  const std::optional<torch::Tensor>& gq, const std::optional<torch::Tensor>& gk,
                                  const std::optional<torch::Tensor>& gv) {
  const int64_t H = q.size(1), L = q.size(2);
  const bool separate = gq || gk || gv;
  TORCH_CHECK(!separate || (gq && gk && gv), "sparse_attention: give all of gq, gk, gv or none");
  const auto& plan =
      cached_plan(pattern, L, H, window, global_first, separate ? Part::kWindowColumns : Part::kAll, causal, q.device());
  if (global_first <= 0 || !separate) return sparse_attention_fast(q, k, v, plan, causal, nullptr, false);
  const auto& rows = cached_plan(pattern, L, H, window, global_first, Part::kGlobalRows, causal, q.device());
  GlobalAttention g;  // the rows plan takes the positions; only the projections are needed
  g.q = *gq;
  g.k = *gk;
  g.v = *gv;
  return sparse_attention_fast(q, k, v, plan, causal, &g, true, &rows);
}

torch::Tensor bigbird_blocks_op(int64_t L, bool causal) {
  const auto layout = build_layout(bench_pattern("bigbird", L, kBigBirdBlock, 0, causal), L, kBigBirdBlock);
  auto m = torch::zeros({layout.n_blocks, layout.n_blocks}, torch::kBool);
  for (int64_t i = 0; i < layout.n_blocks; ++i)
    for (int64_t v = layout.row_ptr[i]; v < layout.row_ptr[i + 1]; ++v) m[i][layout.cols[v]] = true;
  return m;
}

torch::Tensor linear_attention_op(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const std::optional<torch::Tensor>& decay, bool normalize, double eps) {
  return kernels::linear_attention_cuda(q, k, v, decay ? *decay : torch::Tensor(), normalize, eps);
}

torch::Tensor aft_simple_op(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t chunk) {
  return kernels::aft_simple_cuda(q, k, v, chunk);
}

torch::Tensor aft_band_op(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& u, int64_t window) {
  return kernels::aft_band_cuda(q, k, v, u, window);
}

torch::Tensor aft_full_op(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& w, bool causal, int64_t block) {
  return kernels::aft_full_blocked(q, k, v, w, causal, block);
}

int64_t aft_full_default_block_op(int64_t L) { return kernels::aft_full_default_block(L); }

torch::Tensor add_norm_op(const torch::Tensor& x, const torch::Tensor& branch, const torch::Tensor& weight,
                          const std::optional<torch::Tensor>& bias) {
  return kernels::add_norm_cuda(x, branch, weight, bias.value_or(torch::Tensor()), bias ? 1e-5 : 1e-6).first;
}

torch::Tensor gelu_mlp_op(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                          const torch::Tensor& w2, const torch::Tensor& b2) {
  return kernels::gelu_mlp_cuda(x, w1, b1, w2, b2);
}

}  // namespace
}  // namespace longtrain

TORCH_LIBRARY(longtrain, m) {
  m.def(
      "sparse_attention(Tensor q, Tensor k, Tensor v, str pattern, int window, int global_first, bool causal, "
      "Tensor? gq=None, Tensor? gk=None, Tensor? gv=None) -> Tensor");
  m.def("bigbird_blocks(int L, bool causal) -> Tensor", longtrain::bigbird_blocks_op);
  m.def("linear_attention(Tensor q, Tensor k, Tensor v, Tensor? decay=None, bool normalize=True, float eps=1e-6) -> Tensor");
  m.def("aft_simple(Tensor q, Tensor k, Tensor v, int chunk=0) -> Tensor");
  m.def("aft_band(Tensor q, Tensor k, Tensor v, Tensor u, int window) -> Tensor");
  m.def("aft_full(Tensor q, Tensor k, Tensor v, Tensor w, bool causal=True, int block=0) -> Tensor");
  m.def("aft_full_default_block(int L) -> int", longtrain::aft_full_default_block_op);
  m.def("add_norm(Tensor x, Tensor branch, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("gelu_mlp(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
}

// Composite: autograd runs through the op's own torch::autograd::Function.
TORCH_LIBRARY_IMPL(longtrain, CompositeImplicitAutograd, m) {
  m.impl("sparse_attention", longtrain::sparse_attention_op);
  m.impl("linear_attention", longtrain::linear_attention_op);
  m.impl("aft_simple", longtrain::aft_simple_op);
  m.impl("aft_band", longtrain::aft_band_op);
  m.impl("aft_full", longtrain::aft_full_op);
  m.impl("add_norm", longtrain::add_norm_op);
  m.impl("gelu_mlp", longtrain::gelu_mlp_op);
}
