// See op.h. The autograd glue: checks at the boundary, plain params for
// rope.cu, launches on the current CUDA stream.
#include "kernels/rope/op.h"

#include "kernels/glue.h"
#include "kernels/rope/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {

#ifndef LONGTRAIN_WITH_CUDA

std::string qkv_rope_kernel_unsupported(const torch::Tensor&, int64_t) { return "this build has no CUDA kernels"; }

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> qkv_rope_cuda(const torch::Tensor&, int64_t,
                                                                     const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "qkv_rope_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

std::string qkv_rope_kernel_unsupported(const torch::Tensor& fused, int64_t heads) {
  if (!fused.is_cuda()) return "not on a CUDA device";
  if (fused.scalar_type() != torch::kBFloat16 && fused.scalar_type() != torch::kFloat16) return "not bf16 or fp16";
  if (fused.dim() != 3 || heads < 1 || fused.size(2) % (3 * heads) != 0) return "not [B, L, 3 * H * Dh]";
  if ((fused.size(2) / (3 * heads)) % 4 != 0) return "head dim not a multiple of 4";
  if (!fused.is_contiguous()) return "not contiguous";
  return "";
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

rope::DType dtype_of(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? rope::DType::kBFloat16 : rope::DType::kFloat16;
}

// The kernel reads channel pairs: the head dim contiguous, even strides, 4-byte aligned.
torch::Tensor pairs_aligned(const torch::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(0) % 2 == 0 && t.stride(1) % 2 == 0 && t.stride(2) % 2 == 0 &&
                  reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0;
  return ok ? t : t.contiguous();
}

class QkvRopeFunction : public torch::autograd::Function<QkvRopeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& fused, int64_t heads,
                               const torch::Tensor& cos, const torch::Tensor& sin) {
    const int64_t B = fused.size(0), L = fused.size(1), Dh = fused.size(2) / (3 * heads);
    const c10::cuda::CUDAGuard guard(fused.device());
    auto q = torch::empty({B, L, heads, Dh}, fused.options());
    auto k = torch::empty({B, L, heads, Dh}, fused.options());
    rope::QkvRopeParams p;
    p.fused = fused.data_ptr();
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.cos = cos.data_ptr<float>();
    p.sin = sin.data_ptr<float>();
    p.B = static_cast<int>(B);
    p.L = static_cast<int>(L);
    p.H = static_cast<int>(heads);
    p.Dh = static_cast<int>(Dh);
    rope::qkv_rope_fwd(p, dtype_of(fused), c10::cuda::getCurrentCUDAStream().stream());
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["sizes"] = fused.sizes().vec();
    ctx->saved_data["fp16"] = fused.scalar_type() == torch::kFloat16;
    auto v = fused.view({B, L, 3, heads, Dh}).select(2, 2).transpose(1, 2);
    return {q.transpose(1, 2), k.transpose(1, 2), v};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const int64_t B = sizes[0], L = sizes[1], Dh = sizes[2] / (3 * heads);
    const auto& like = saved[0];
    const auto dtype = ctx->saved_data["fp16"].toBool() ? torch::kFloat16 : torch::kBFloat16;
    torch::Tensor g[3];
    for (int t = 0; t < 3; ++t) {
      g[t] = grads[t].defined() ? pairs_aligned(grads[t].to(dtype))
                                : torch::zeros({B, heads, L, Dh}, like.options().dtype(dtype));
    }
    const c10::cuda::CUDAGuard guard(like.device());
    auto dfused = torch::empty({B, L, 3 * heads * Dh}, g[0].options());
    rope::QkvRopeParams p;
    p.dq = g[0].data_ptr();
    p.dk = g[1].data_ptr();
    p.dv = g[2].data_ptr();
    set_strides(p.dq_strides, g[0]);
    set_strides(p.dk_strides, g[1]);
    set_strides(p.dv_strides, g[2]);
    p.dfused = dfused.data_ptr();
    p.cos = saved[0].data_ptr<float>();
    p.sin = saved[1].data_ptr<float>();
    p.B = static_cast<int>(B);
    p.L = static_cast<int>(L);
    p.H = static_cast<int>(heads);
    p.Dh = static_cast<int>(Dh);
    rope::qkv_rope_bwd(p, dtype_of(dfused), c10::cuda::getCurrentCUDAStream().stream());
    return {dfused, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> qkv_rope_cuda(const torch::Tensor& fused, int64_t heads,
                                                                     const torch::Tensor& cos,
                                                                     const torch::Tensor& sin) {
  const std::string why = qkv_rope_kernel_unsupported(fused, heads);
  TORCH_CHECK(why.empty(), "qkv_rope_cuda: fused ", fused.sizes(), " (", fused.scalar_type(), "): ", why);
  const int64_t L = fused.size(1), half = fused.size(2) / (3 * heads) / 2;
  TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.sizes() == torch::IntArrayRef({L, half}) && sin.sizes() == cos.sizes() &&
                  cos.device() == fused.device() && sin.device() == fused.device(),
              "qkv_rope_cuda: cos and sin must be contiguous fp32 [", L, ", ", half, "] on ", fused.device(),
              ", got ", cos.sizes(), " and ", sin.sizes());
  auto out = QkvRopeFunction::apply(fused, heads, cos, sin);
  return {out[0], out[1], out[2]};
}

#endif

}  // namespace longtrain::kernels
