// See op.h. The autograd glue: checks at the boundary, plain params for the
// kernels (params.h), launches on the current CUDA stream.
#include "kernels/aft/op.h"

#include <cstdint>

#include "kernels/aft/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {

std::string aft_inputs_unsupported(const torch::Tensor& q) {
  if (!aft_cuda_built()) return "this build has no CUDA kernels";
  if (!q.is_cuda()) return "inputs are not on a CUDA device";
  if (q.scalar_type() != torch::kBFloat16 && q.scalar_type() != torch::kFloat16) {
    return "the kernel takes bf16 or fp16 (train.dtype bf16 on CUDA), got " +
           std::string(c10::toString(q.scalar_type()));
  }
  if (q.dim() != 3) return "inputs must be [B, L, d]";
  return "";
}

std::string aft_simple_kernel_unsupported(const torch::Tensor& q) {
  if (std::string why = aft_inputs_unsupported(q); !why.empty()) return why;
  if (q.size(2) % 2 != 0) return "the width d must be even, got " + std::to_string(q.size(2));
  return "";
}

std::string aft_band_kernel_unsupported(const torch::Tensor& q, int64_t heads) {
  std::string why = aft_simple_kernel_unsupported(q);
  if (!why.empty()) return why;
  if (heads < 1 || q.size(2) % heads != 0 || (q.size(2) / heads) % 2 != 0) {
    return "the width per head must be even (d = " + std::to_string(q.size(2)) + ", " + std::to_string(heads) +
           " heads)";
  }
  return "";
}

#ifndef LONGTRAIN_WITH_CUDA

bool aft_cuda_built() { return false; }

torch::Tensor aft_simple_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t) {
  TORCH_CHECK(false, "aft_simple_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

torch::Tensor aft_band_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                            int64_t, int64_t) {
  TORCH_CHECK(false, "aft_band_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

bool aft_cuda_built() { return true; }

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Channel pairs are read as one 4-byte access: the channel dim contiguous,
// even strides and a 4-byte aligned start, else a contiguous copy.
torch::Tensor pairs_aligned(const torch::Tensor& t) {
  const bool ok = t.stride(2) == 1 && t.stride(1) % 2 == 0 && t.stride(0) % 2 == 0 &&
                  reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0;
  return ok ? t : t.contiguous();
}

void set_strides(int64_t (&s)[2], const torch::Tensor& t) {
  s[0] = t.stride(0);
  s[1] = t.stride(1);
}

AftDType dtype_of(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? AftDType::kBFloat16 : AftDType::kFloat16;
}

AftSimpleParams params_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& state, int64_t chunk) {
  AftSimpleParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  set_strides(p.q_strides, q);
  set_strides(p.k_strides, k);
  set_strides(p.v_strides, v);
  p.state = state.data_ptr<float>();
  p.B = static_cast<int>(q.size(0));
  p.L = static_cast<int>(q.size(1));
  p.d = static_cast<int>(q.size(2));
  p.chunk = chunk > 0 ? static_cast<int>(chunk) : aft_chunk_size(p.B, p.L, p.d);
  return p;
}

int64_t n_chunks_of(const AftSimpleParams& p) { return (p.L + p.chunk - 1) / p.chunk; }

// AFT-simple's chunking: `chunk` > 0 fixes every pass's chunk (the tests);
// 0 takes aft_pass_chunk_size for the chunk passes and aft_chunk_size for the
// forward's summaries (params.h).
AftSimpleParams simple_params_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& state, int64_t chunk, bool forward) {
  AftSimpleParams p = params_of(q, k, v, state, chunk);
  if (chunk == 0) {
    p.chunk = aft_pass_chunk_size(p.B, p.L, p.d);
    if (forward) p.summary_chunk = aft_chunk_size(p.B, p.L, p.d);
  }
  return p;
}

class AftSimpleFunction : public torch::autograd::Function<AftSimpleFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               int64_t chunk) {
    q = pairs_aligned(q);
    k = pairs_aligned(k);
    v = pairs_aligned(v);
    const int64_t B = q.size(0), L = q.size(1), d = q.size(2), n_sub = (L + kAftSub - 1) / kAftSub;
    const auto f32 = q.options().dtype(torch::kFloat32);
    auto y = torch::empty({B, L, d}, q.options());
    auto state = torch::empty({3, B, n_sub, d}, f32);
    AftSimpleParams p = simple_params_of(q, k, v, state, chunk, /*forward=*/true);
    const int64_t n_summaries = (L + aft_summary_chunk(p) - 1) / aft_summary_chunk(p);
    auto work = torch::empty({2, 3, B, n_summaries, d}, f32);  // summaries, carries
    p.y = y.data_ptr();
    set_strides(p.y_strides, y);
    p.summary = work[0].data_ptr<float>();
    p.carry = work[1].data_ptr<float>();
    const c10::cuda::CUDAGuard guard(q.device());
    aft_simple_fwd(p, dtype_of(q), c10::cuda::getCurrentCUDAStream().stream());
    ctx->save_for_backward({q, k, v, state});
    ctx->saved_data["chunk"] = chunk;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto q = saved[0], k = saved[1], v = saved[2], state = saved[3];
    const int64_t B = q.size(0), L = q.size(1), d = q.size(2);
    if (!grads[0].defined()) return {torch::zeros_like(q), torch::zeros_like(k), torch::zeros_like(v), torch::Tensor()};
    auto dy = pairs_aligned(grads[0].to(q.scalar_type()));
    auto dq = torch::empty({B, L, d}, q.options());
    auto dk = torch::empty({B, L, d}, q.options());
    auto dv = torch::empty({B, L, d}, q.options());
    AftSimpleBwdParams bp;
    bp.fwd = simple_params_of(q, k, v, state, ctx->saved_data["chunk"].toInt(), /*forward=*/false);
    const auto f32 = q.options().dtype(torch::kFloat32);
    auto wsum = torch::empty({3, B, n_chunks_of(bp.fwd), d}, f32);
    auto xcarry = torch::empty({2, B, n_chunks_of(bp.fwd), d}, f32);
    bp.dy = dy.data_ptr();
    bp.dq = dq.data_ptr();
    bp.dk = dk.data_ptr();
    bp.dv = dv.data_ptr();
    set_strides(bp.dy_strides, dy);
    set_strides(bp.dq_strides, dq);
    set_strides(bp.dk_strides, dk);
    set_strides(bp.dv_strides, dv);
    bp.wsum = wsum.data_ptr<float>();
    bp.xcarry = xcarry.data_ptr<float>();
    const c10::cuda::CUDAGuard guard(q.device());
    aft_simple_bwd(bp, dtype_of(q), c10::cuda::getCurrentCUDAStream().stream());
    return {dq, dk, dv, torch::Tensor()};  // chunk: none
  }
};


class AftBandFunction : public torch::autograd::Function<AftBandFunction> {
 public:
  // u: [H, window] fp32 contiguous (the caller converts).
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               torch::Tensor u, int64_t window, int64_t chunk) {
    q = pairs_aligned(q);
    k = pairs_aligned(k);
    v = pairs_aligned(v);
    const int64_t B = q.size(0), L = q.size(1), d = q.size(2), n_sub = (L + kAftSub - 1) / kAftSub;
    const auto f32 = q.options().dtype(torch::kFloat32);
    auto y = torch::empty({B, L, d}, q.options());
    auto state = torch::empty({3, B, n_sub, d}, f32);
    auto rows = torch::empty({2, B, L, d}, f32);
    AftBandParams bp;
    bp.scan = params_of(q, k, v, state, chunk);
    auto work = torch::empty({2, 3, B, n_chunks_of(bp.scan), d}, f32);  // summaries, carries
    bp.scan.y = y.data_ptr();
    set_strides(bp.scan.y_strides, y);
    bp.scan.summary = work[0].data_ptr<float>();
    bp.scan.carry = work[1].data_ptr<float>();
    bp.u = u.data_ptr<float>();
    bp.H = static_cast<int>(u.size(0));
    bp.window = static_cast<int>(window);
    bp.rows = rows.data_ptr<float>();
    const c10::cuda::CUDAGuard guard(q.device());
    aft_band_fwd(bp, dtype_of(q), c10::cuda::getCurrentCUDAStream().stream());
    ctx->save_for_backward({q, k, v, u, state, rows});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["window"] = window;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto q = saved[0], k = saved[1], v = saved[2], u = saved[3], state = saved[4], rows = saved[5];
    const int64_t B = q.size(0), L = q.size(1), d = q.size(2);
    if (!grads[0].defined()) {
      return {torch::zeros_like(q), torch::zeros_like(k), torch::zeros_like(v), torch::zeros_like(u), torch::Tensor(),
              torch::Tensor()};
    }
    auto dy = pairs_aligned(grads[0].to(q.scalar_type()));
    auto dq = torch::empty({B, L, d}, q.options());
    auto dk = torch::empty({B, L, d}, q.options());
    auto dv = torch::empty({B, L, d}, q.options());
    auto du = torch::zeros_like(u);
    AftBandBwdParams bb;
    AftSimpleBwdParams& bp = bb.scan;
    bp.fwd = params_of(q, k, v, state, ctx->saved_data["chunk"].toInt());
    const auto f32 = q.options().dtype(torch::kFloat32);
    auto wsum = torch::empty({3, B, n_chunks_of(bp.fwd), d}, f32);    // summaries and decays
    auto xcarry = torch::empty({2, B, n_chunks_of(bp.fwd), d}, f32);  // carries
    bp.dy = dy.data_ptr();
    bp.dq = dq.data_ptr();
    bp.dk = dk.data_ptr();
    bp.dv = dv.data_ptr();
    set_strides(bp.dy_strides, dy);
    set_strides(bp.dq_strides, dq);
    set_strides(bp.dk_strides, dk);
    set_strides(bp.dv_strides, dv);
    bp.wsum = wsum.data_ptr<float>();
    bp.xcarry = xcarry.data_ptr<float>();
    bb.u = u.data_ptr<float>();
    bb.H = static_cast<int>(u.size(0));
    bb.window = static_cast<int>(ctx->saved_data["window"].toInt());
    bb.rows = rows.data_ptr<float>();
    bb.du = du.data_ptr<float>();
    const c10::cuda::CUDAGuard guard(q.device());
    aft_band_bwd(bb, dtype_of(q), c10::cuda::getCurrentCUDAStream().stream());
    return {dq, dk, dv, du, torch::Tensor(), torch::Tensor()};  // window, chunk: none
  }
};
}  // namespace

namespace {

// The checks both entry points share: shapes, device, dtype, sizes, chunk.
void check_inputs(const char* op, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  int64_t chunk) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(), op,
              ": q, k, v must be [B, L, d] of one shape, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one CUDA device, got ", q.device(), ", ", k.device(), ", ", v.device());
  TORCH_CHECK((q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat16) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              op, ": q, k, v must all be bf16 or all fp16, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  const int64_t B = q.size(0), L = q.size(1), d = q.size(2);
  TORCH_CHECK(d >= 2 && d % 2 == 0, op, ": the width d must be even, got ", q.sizes());
  TORCH_CHECK(B >= 1 && L >= 1 && L < (1ll << 30) && B <= 65535 && B * d < (1ll << 31) &&
                  B * ((L + kAftSub - 1) / kAftSub) * d < (1ll << 40),
              op, ": needs 1 <= B <= 65535 and 1 <= L < 2^30, got ", q.sizes());
  TORCH_CHECK(chunk == 0 || (chunk >= kAftSub && chunk <= 4096 && chunk % kAftSub == 0), op,
              ": chunk must be 0 (automatic) or a multiple of ", kAftSub, " in [", kAftSub, ", 4096], got ", chunk);
}

}  // namespace

torch::Tensor aft_simple_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              int64_t chunk) {
  check_inputs("aft_simple_cuda", q, k, v, chunk);
  return AftSimpleFunction::apply(q, k, v, chunk);
}

torch::Tensor aft_band_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& u, int64_t window, int64_t chunk) {
  check_inputs("aft_band_cuda", q, k, v, chunk);
  TORCH_CHECK(window >= 1 && window < (1 << 30) && u.dim() == 2 && u.size(1) == window,
              "aft_band_cuda: bias must be [H, window = ", window, "] with window >= 1, got ", u.sizes());
  TORCH_CHECK(u.device() == q.device() && u.is_floating_point(), "aft_band_cuda: bias must be floating point on ",
              q.device(), ", got ", u.scalar_type(), " on ", u.device());
  TORCH_CHECK(u.size(0) >= 1 && q.size(2) % u.size(0) == 0 && (q.size(2) / u.size(0)) % 2 == 0, "aft_band_cuda: ",
              u.size(0), " heads must divide d with an even width per head, got q ", q.sizes());
  return AftBandFunction::apply(q, k, v, u.to(torch::kFloat32).contiguous(), window, chunk);
}

#endif

}  // namespace longtrain::kernels
