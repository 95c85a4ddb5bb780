// AFT-full, blocked: the autograd Function of aft_full_blocked (op.h). Per
// channel of q, k, v: [B, L, d], with the bias w: [L, L] (causal: c <= r):
//
//   y_r = σ(q_r) ⊙ num_r / den_r,  [num | den]_r = Σ_c P[r, c] [A | E]_c
//   P[r, c] = exp(w[r, c] − m_r)   (m_r: row max of the unmasked w, detached)
//   E = exp(k − ref),  A = E ⊙ v   (ref: [B, 1, d] the max of k over L, detached)
//
// Both shifts cancel in num/den. ref = the max keeps E ≤ 1 (no overflow;
// keys more than ~87 (bf16/fp32) or ~17 (fp16) below their channel's max
// underflow, and a causal row whose every key does gives 0/0 = NaN: loud, not
// silent). model/aft.cpp takes the first key when causal so that no row's
// arithmetic depends on later tokens bit for bit; here later keys reach earlier
// rows only through the rounding of E, and the max is the overflow-safe choice.
//
// Layout: [A | E] as AE: [L, B·2d] (row t holds batch b's A then E), so ONE
// GEMM per tile serves the whole batch and both sums.
// Forward, row blocks [r0, r1) (causal: only columns [0, r1) matter):
//   P_i = p_rows(w)           [r1−r0, c1]  operand dtype (the inputs' dtype)
//   ND[r0:r1] = P_i @ AE[0:c1]            [r1−r0, B·2d] fp32 out
// Backward, with G = [dnum | dden]: [L, B·2d], dnum = dy σ(q)/den,
// dden = −dnum ⊙ num/den, column blocks [c0, c1) (causal: rows [c0, L)):
//   dP = G[c0:L] @ AE[c0:c1]ᵀ              operand dtype (summed over the batch)
//   P_c, dw[:, c0:c1] = P_c ⊙ (dP − corr) (0 masked / above)   one read of w
//   dAE[c0:c1] = P_cᵀ @ G[c0:L]           fp32 out, written once (no accumulation)
// then dv = dA ⊙ E, dk = (dA ⊙ v + dE) ⊙ E, dq = dy ⊙ num/den ⊙ σ'(q).
// corr_r = Σ_h G_rh ND_rh / Σ_c P_rc: each row of the true dw sums to zero
// (y does not change when a constant is added to a row of w), i.e.
// Σ_c P_rc dP_rc = Σ_h dnum_rh (num_rh − R_rh den_rh) = 0; with dnum, dden
// rounded to the operand dtype it is not, and a row of few terms (row 0: one)
// keeps that rounding whole — dw[0, 0] of order 2^-9 |dnum·A| where the truth
// is 0. corr_r (the residual from the forward's fp32 ND, O(L·d)) restores the
// zero row sum, and the rounding left is that of the bf16 dP itself.
// The backward runs by columns so each dAE row block is one GEMM output rather
// than a read-modify-write per row block (2.3 GB more traffic at 16K).
//
// Memory beyond w and dw: O(L·d) (AE and G in the operand dtype; ND, dAE and
// elementwise temporaries in fp32; m, s, corr: [L]) plus one tile P and one dP of [block, L]. Nothing else is
// L×L. FLOPs: three GEMMs of about L²/2 · 2d multiply-adds each (causal).
//
// Numerics: the GEMM operands are rounded to the inputs' dtype (as in the
// plain PyTorch form run in bf16), products and sums in fp32. On CPU the same
// steps run in torch ops with the operands rounded the same way and the
// products taken in fp32 (fp64 for fp64 inputs: there it equals aft_full to
// fp64 rounding), so CPU tests check the algorithm and its rounding points.
#include "kernels/aft/op.h"

#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "kernels/aft/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Makes t's CUDA device current for the op's work (nothing on CPU or in a
// build without CUDA); the forward and the backward both hold one.
struct DeviceOf {
#ifdef LONGTRAIN_WITH_CUDA
  explicit DeviceOf(const Tensor& t) {
    if (t.is_cuda()) guard.emplace(t.device());
  }
  std::optional<c10::cuda::CUDAGuard> guard;
#else
  explicit DeviceOf(const Tensor&) {}
#endif
};

torch::ScalarType accumulation_type(const Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// [rows, cols] in `dtype`, row stride rounded up to 8 elements so that cuBLAS
// sees 16-byte aligned rows of a bf16/fp16 operand.
Tensor tile(int64_t rows, int64_t cols, const torch::TensorOptions& opts) {
  const int64_t ld = (cols + 7) / 8 * 8;
  return torch::empty({rows, ld}, opts).narrow(1, 0, cols);
}

// [rows, cols] bool: true where causal masks (r, c): c > r, r = row0 + i, c = col0 + j.
Tensor causal_mask(int64_t row0, int64_t rows, int64_t col0, int64_t cols, const torch::Device& dev) {
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  return torch::arange(col0, col0 + cols, opts).unsqueeze(0) > torch::arange(row0, row0 + rows, opts).unsqueeze(1);
}

// The masked bias tile in the accumulation dtype (−inf where masked).
Tensor masked_bias(const Tensor& w, int64_t row0, int64_t rows, int64_t col0, int64_t cols, bool causal,
                   torch::ScalarType acc) {
  auto t = w.narrow(0, row0, rows).narrow(1, col0, cols).to(acc);
  return causal ? t.masked_fill(causal_mask(row0, rows, col0, cols, w.device()),
                                -std::numeric_limits<double>::infinity())
                : t;
}

#ifdef LONGTRAIN_WITH_CUDA
AftDType op_dtype_of(const Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? AftDType::kBFloat16 : AftDType::kFloat16;
}

AftFullWDType w_dtype_of(const Tensor& w) {
  switch (w.scalar_type()) {
    case torch::kBFloat16: return AftFullWDType::kBFloat16;
    case torch::kFloat16: return AftFullWDType::kFloat16;
    default: return AftFullWDType::kFloat32;
  }
}

AftFullTileParams tile_params(const Tensor& w, const Tensor& m, int64_t row0, int64_t row1, int64_t col0,
                              int64_t col1, bool causal) {
  AftFullTileParams p;
  p.w = w.data_ptr();
  p.w_stride = w.stride(0);
  p.m = m.data_ptr<float>();
  p.row0 = static_cast<int>(row0);
  p.row1 = static_cast<int>(row1);
  p.col0 = static_cast<int>(col0);
  p.col1 = static_cast<int>(col1);
  p.L = static_cast<int>(w.size(0));
  p.causal = causal;
  return p;
}

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The row kernels' params: shapes from q, the [B, L, d] inputs given (with
// unit channel stride, copied if need be; `held` keeps those copies alive
// until the launch), outputs set by the caller.
struct RowsCall {
  AftFullRowsParams p;
  Tensor held[4];
};

RowsCall rows_call(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dy) {
  RowsCall call;
  call.p.B = static_cast<int>(q.size(0));
  call.p.L = static_cast<int>(q.size(1));
  call.p.d = static_cast<int>(q.size(2));
  const Tensor* in[4] = {&q, &k, &v, &dy};
  const void** ptr[4] = {&call.p.q, &call.p.k, &call.p.v, &call.p.dy};
  int64_t* strides[4] = {call.p.q_strides, call.p.k_strides, call.p.v_strides, call.p.dy_strides};
  for (int i = 0; i < 4; ++i) {
    if (!in[i]->defined()) continue;
    call.held[i] = in[i]->stride(2) == 1 ? *in[i] : in[i]->contiguous();
    *ptr[i] = call.held[i].data_ptr();
    strides[i][0] = call.held[i].stride(0);
    strides[i][1] = call.held[i].stride(1);
  }
  return call;
}
#endif

// Forward row block: P of rows [r0, r1) x columns [0, c1); writes m[r0:r1] and
// the row sums s[r0:r1] (of P before rounding).
Tensor p_rows(const Tensor& w, Tensor& m, Tensor& s, int64_t r0, int64_t r1, int64_t c1, bool causal,
              torch::ScalarType op) {
  auto p = tile(r1 - r0, c1, w.options().dtype(op));
#ifdef LONGTRAIN_WITH_CUDA
  if (w.is_cuda()) {
    AftFullTileParams tp = tile_params(w, m, r0, r1, 0, c1, causal);
    tp.s = s.data_ptr<float>();
    tp.p = p.data_ptr();
    tp.p_stride = p.stride(0);
    aft_full_p_rows(tp, w_dtype_of(w), op == torch::kBFloat16 ? AftDType::kBFloat16 : AftDType::kFloat16, stream());
    return p;
  }
#endif
  auto wb = masked_bias(w, r0, r1 - r0, 0, c1, causal, m.scalar_type());
  auto mx = std::get<0>(wb.max(1, /*keepdim=*/true));  // column 0 is never masked: finite
  m.narrow(0, r0, r1 - r0).copy_(mx.squeeze(1));
  auto e = torch::exp(wb - mx);
  s.narrow(0, r0, r1 - r0).copy_(e.sum(1));
  p.copy_(e);
  return p;
}

// Backward column block, from one read of w: P of rows [r0, L) x columns
// [c0, c1) with the saved m (returned, in the operand dtype `op`), and
// dw[:, c0:c1] = exp(w − m) ⊙ (dP − corr) on rows [r0, L), 0 above and where masked.
Tensor p_cols_and_dw(Tensor& dw, const Tensor& w, const Tensor& m, const Tensor& corr, const Tensor& dp, int64_t r0,
                     int64_t c0, int64_t c1, bool causal, torch::ScalarType op) {
  const int64_t L = w.size(0);
  auto p = tile(L - r0, c1 - c0, w.options().dtype(op));
#ifdef LONGTRAIN_WITH_CUDA
  if (w.is_cuda()) {
    AftFullTileParams tp = tile_params(w, m, r0, L, c0, c1, causal);
    tp.p = p.data_ptr();
    tp.p_stride = p.stride(0);
    tp.dcorr = corr.data_ptr<float>();
    tp.dp = dp.data_ptr();
    tp.dp_stride = dp.stride(0);
    tp.dw = dw.data_ptr();
    tp.dw_stride = dw.stride(0);
    aft_full_p_dw(tp, w_dtype_of(w), op_dtype_of(dp), stream());
    return p;
  }
#endif
  auto rows = [&](const Tensor& t) { return t.narrow(0, r0, L - r0).unsqueeze(1); };
  auto e = torch::exp(masked_bias(w, r0, L - r0, c0, c1 - c0, causal, m.scalar_type()) - rows(m));
  p.copy_(e);
  auto slab = dw.narrow(1, c0, c1 - c0);
  slab.narrow(0, 0, r0).zero_();
  slab.narrow(0, r0, L - r0).copy_(e * (dp.to(m.scalar_type()) - rows(corr)));
  return p;
}

// a @ b of operand-dtype tensors, into `out` (acc dtype): cuBLAS with an fp32
// output on CUDA; on CPU the rounded operands multiplied in acc.
void gemm_acc(Tensor out, const Tensor& a, const Tensor& b) {
#ifdef LONGTRAIN_WITH_CUDA
  if (a.is_cuda()) {
    at::mm_out(out, a, b, out.scalar_type());
    return;
  }
#endif
  at::mm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
}

// a @ b rounded to the operand dtype (cuBLAS: fp32 accumulation inside).
Tensor gemm_op(const Tensor& a, const Tensor& b, torch::ScalarType acc) {
  if (a.is_cuda()) return at::mm(a, b);
  return at::mm(a.to(acc), b.to(acc)).to(a.scalar_type());
}

// [B, L, 2, d] -> [L, B·2d] in `dtype`, contiguous.
Tensor pair_rows(const Tensor& x, const Tensor& y, torch::ScalarType dtype) {
  const int64_t B = x.size(0), L = x.size(1), d = x.size(2);
  return torch::stack({x, y}, 2).permute({1, 0, 2, 3}).to(dtype).contiguous().view({L, B * 2 * d});
}

// [L, B·2d] -> two [B, L, d] views (first and second half of each batch's row).
std::pair<Tensor, Tensor> unpair_rows(const Tensor& t, int64_t B, int64_t d) {
  auto v = t.view({t.size(0), B, 2, d}).permute({1, 0, 2, 3});  // [B, L, 2, d]
  return {v.select(2, 0), v.select(2, 1)};
}

// The [L, L] corner of a [P0, P1] table (a view: same data and row stride).
Tensor corner(const Tensor& table, int64_t L) { return table.narrow(0, 0, L).narrow(1, 0, L); }

class AftFullFunction : public torch::autograd::Function<AftFullFunction> {
 public:
  // table: the whole [P0, P1] bias, P0, P1 >= L, unit column stride; the op
  // reads its [L, L] corner and returns the whole table's gradient (zero
  // outside the corner). Narrowing outside the Function instead made autograd's view
  // backward zero a [P, P] tensor and copy dw into it, once per narrow: at
  // L = P = 16K two fills and two copies of 512 MB, 1.04 ms of the 7.45 ms step.
  static Tensor forward(AutogradContext* ctx, Tensor q, Tensor k, Tensor v, Tensor table, bool causal,
                        int64_t block) {
    const int64_t B = q.size(0), L = q.size(1), d = q.size(2);
    const auto w = corner(table, L);
    const auto acc = accumulation_type(q), op = q.scalar_type();
    const DeviceOf guard(q);
    // ref: [B, 1, d] (no grad inside a Function); AE = [e·v | e], e = exp(k − ref) <= 1: [L, B·2d].
    Tensor ref, ae;
#ifdef LONGTRAIN_WITH_CUDA
    if (q.is_cuda()) {
      ref = k.amax(1, /*keepdim=*/true).to(acc).contiguous();  // exact: the max of bf16/fp16 values
      ae = torch::empty({L, B * 2 * d}, q.options());
      RowsCall call = rows_call(q, k, v, Tensor());
      call.p.ref = ref.data_ptr<float>();
      call.p.pairs = ae.data_ptr();
      aft_full_fwd_prep(call.p, op_dtype_of(q), stream());
    } else
#endif
    {
      auto ka = k.to(acc), va = v.to(acc);
      ref = ka.amax(1, /*keepdim=*/true);
      auto e = torch::exp(ka - ref);
      ae = pair_rows(e * va, e, op);
    }
    auto nd = torch::empty({L, B * 2 * d}, q.options().dtype(acc));
    auto m = torch::empty({L}, q.options().dtype(acc));
    auto row_sums = torch::empty({L}, q.options().dtype(acc));
    for (int64_t r0 = 0; r0 < L; r0 += block) {
      const int64_t r1 = std::min(L, r0 + block), c1 = causal ? r1 : L;
      auto p = p_rows(w, m, row_sums, r0, r1, c1, causal, op);
      gemm_acc(nd.narrow(0, r0, r1 - r0), p, ae.narrow(0, 0, c1));
    }
    Tensor y;
#ifdef LONGTRAIN_WITH_CUDA
    if (q.is_cuda()) {
      y = torch::empty({B, L, d}, q.options());
      RowsCall call = rows_call(q, Tensor(), Tensor(), Tensor());
      call.p.nd = nd.data_ptr<float>();
      call.p.y = y.data_ptr();
      aft_full_fwd_out(call.p, op_dtype_of(q), stream());
    } else
#endif
    {
      auto [num, den] = unpair_rows(nd, B, d);
      y = (torch::sigmoid(q.to(acc)) * (num / den)).to(q.scalar_type());
    }
    ctx->save_for_backward({q, k, v, table, ae, nd, ref, m, row_sums});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["block"] = block;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &q = s[0], &k = s[1], &v = s[2], &table = s[3], &ae = s[4], &nd = s[5], &ref = s[6], &m = s[7],
               &row_sums = s[8];
    const bool causal = ctx->saved_data["causal"].toBool();
    const int64_t block = ctx->saved_data["block"].toInt();
    if (!grads[0].defined()) {
      return {torch::zeros_like(q), torch::zeros_like(k), torch::zeros_like(v), torch::zeros_like(table), Tensor(),
              Tensor()};
    }
    const int64_t B = q.size(0), L = q.size(1), d = q.size(2), P0 = table.size(0), P1 = table.size(1);
    const auto w = corner(table, L);
    const auto acc = accumulation_type(q), op = q.scalar_type();
    const DeviceOf guard(q);
    // dq; G = [dnum | dden] in the operand dtype, [L, B·2d]; corr [L] (see the file comment).
    Tensor dq, g, corr;
#ifdef LONGTRAIN_WITH_CUDA
    if (q.is_cuda()) {
      dq = torch::empty({B, L, d}, q.options());
      g = torch::empty({L, B * 2 * d}, q.options());
      corr = torch::empty({L}, q.options().dtype(acc));
      RowsCall call = rows_call(q, Tensor(), Tensor(), grads[0].to(op));
      call.p.nd = nd.data_ptr<float>();
      call.p.row_sums = row_sums.data_ptr<float>();
      call.p.pairs = g.data_ptr();
      call.p.dq = dq.data_ptr();
      call.p.corr = corr.data_ptr<float>();
      aft_full_bwd_prep(call.p, op_dtype_of(q), stream());
    } else
#endif
    {
      auto [num, den] = unpair_rows(nd, B, d);
      auto ratio = num / den;  // [B, L, d]
      auto dy = grads[0].to(acc);
      auto sig = torch::sigmoid(q.to(acc));
      dq = (dy * ratio * sig * (1 - sig)).to(q.scalar_type());
      auto dnum = dy * sig / den;
      g = pair_rows(dnum, -dnum * ratio, op);
      corr = (g.to(acc) * nd).sum(1) / row_sums;
    }
    auto dae = torch::empty({L, B * 2 * d}, q.options().dtype(acc));
    // The whole table's gradient: p_cols_and_dw fills the corner, zeros outside it.
    auto dtable = torch::empty({P0, P1}, table.options());
    if (P0 > L) dtable.narrow(0, L, P0 - L).zero_();
    if (P1 > L) dtable.narrow(0, 0, L).narrow(1, L, P1 - L).zero_();
    auto dw = corner(dtable, L);
    for (int64_t c0 = 0; c0 < L; c0 += block) {
      const int64_t c1 = std::min(L, c0 + block), r0 = causal ? c0 : 0;
      auto g_rows = g.narrow(0, r0, L - r0);
      auto dp = gemm_op(g_rows, ae.narrow(0, c0, c1 - c0).t(), acc);  // [L − r0, c1 − c0]
      auto p = p_cols_and_dw(dw, w, m, corr, dp, r0, c0, c1, causal, op);  // [L − r0, c1 − c0]
      gemm_acc(dae.narrow(0, c0, c1 - c0), p.t(), g_rows);
    }
    Tensor dk, dv;
#ifdef LONGTRAIN_WITH_CUDA
    if (q.is_cuda()) {
      dk = torch::empty({B, L, d}, q.options());
      dv = torch::empty({B, L, d}, q.options());
      RowsCall call = rows_call(q, k, v, Tensor());
      call.p.ref = ref.data_ptr<float>();
      call.p.dae = dae.data_ptr<float>();
      call.p.dk = dk.data_ptr();
      call.p.dv = dv.data_ptr();
      aft_full_bwd_post(call.p, op_dtype_of(q), stream());
    } else
#endif
    {
      auto [da, de] = unpair_rows(dae, B, d);
      auto e = torch::exp(k.to(acc) - ref);
      dv = (da * e).to(v.scalar_type());
      dk = ((da * v.to(acc) + de) * e).to(k.scalar_type());
    }
    return {dq, dk, dv, dtable, Tensor(), Tensor()};
  }
};

}  // namespace

std::string aft_full_kernel_unsupported(const torch::Tensor& q, const torch::Tensor& w) {
  if (std::string why = aft_inputs_unsupported(q); !why.empty()) return why;
  if (w.device() != q.device()) return "the bias is not on the inputs' device";
  if (w.scalar_type() != torch::kFloat32 && w.scalar_type() != torch::kBFloat16 &&
      w.scalar_type() != torch::kFloat16) {
    return "the bias must be fp32, bf16 or fp16, got " + std::string(c10::toString(w.scalar_type()));
  }
  return "";
}

torch::Tensor aft_full_blocked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& w, bool causal, int64_t block) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "aft_full_blocked: q, k, v must be [B, L, d] of one shape, got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device() && w.device() == q.device(),
              "aft_full_blocked: q, k, v, w must be on one device, got ", q.device(), ", ", k.device(), ", ",
              v.device(), ", ", w.device());
  TORCH_CHECK(q.is_floating_point() && k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "aft_full_blocked: q, k, v must be of one floating dtype, got ", q.scalar_type(), ", ", k.scalar_type(),
              ", ", v.scalar_type());
  const int64_t B = q.size(0), L = q.size(1), d = q.size(2);
  TORCH_CHECK(B >= 1 && L >= 1 && d >= 1 && L < (1ll << 31), "aft_full_blocked: needs B, L, d >= 1, got ",
              q.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) >= L && w.size(1) >= L && w.is_floating_point(),
              "aft_full_blocked: bias must be a floating [P, P] with P >= L = ", L, ", got ", w.scalar_type(), " ",
              w.sizes());
  TORCH_CHECK(block >= 0, "aft_full_blocked: block must be >= 1 (0: the default, ", aft_full_default_block(L),
              " at L = ", L, "), got ", block);
  if (q.is_cuda()) {
    const std::string why = aft_full_kernel_unsupported(q, w);
    TORCH_CHECK(why.empty(), "aft_full_blocked: ", why);
  }
  // The kernels read w with a row stride and unit column stride; the Function
  // takes the whole table (see AftFullFunction::forward).
  auto table = w.stride(1) == 1 ? w : w.contiguous();
  return AftFullFunction::apply(q, k, v, table, causal, block > 0 ? block : aft_full_default_block(L));
}

}  // namespace longtrain::kernels
