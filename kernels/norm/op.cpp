// See op.h. Checks at the boundary, the autograd Function, plain params for
// norm.cu, launches on the current CUDA stream.
#include "kernels/norm/op.h"

#include "kernels/glue.h"
#include "kernels/norm/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {

#ifndef LONGTRAIN_WITH_CUDA

std::string add_norm_kernel_unsupported(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                        const torch::Tensor&) {
  return "this build has no CUDA kernels";
}

std::pair<torch::Tensor, torch::Tensor> add_norm_cuda(const torch::Tensor&, const torch::Tensor&,
                                                      const torch::Tensor&, const torch::Tensor&, double) {
  TORCH_CHECK(false, "add_norm_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

norm::DType dtype_of(const Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? norm::DType::kBFloat16 : norm::DType::kFloat16;
}

// Inputs: x, branch (or an empty tensor), weight, bias (or empty). Outputs:
// {y, sum} with a branch, {y} without.
class AddNormFunction : public torch::autograd::Function<AddNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& branch, const Tensor& weight,
                               const Tensor& bias, double eps) {
    const c10::cuda::CUDAGuard guard(x.device());
    const bool add = branch.numel() > 0, rms = bias.numel() == 0;
    const int64_t D = x.size(-1), N = x.numel() / D;
    auto y = torch::empty_like(x);
    Tensor sum = add ? torch::empty_like(x) : x;
    const auto stats = x.options().dtype(torch::kFloat32);
    Tensor mean = rms ? Tensor() : torch::empty({N}, stats), rstd = torch::empty({N}, stats);
    norm::NormFwdParams p;
    p.x = x.data_ptr();
    p.branch = add ? branch.data_ptr() : nullptr;
    p.sum = add ? sum.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.weight = weight.data_ptr<float>();
    p.bias = rms ? nullptr : bias.data_ptr<float>();
    p.mean = rms ? nullptr : mean.data_ptr<float>();
    p.rstd = rstd.data_ptr<float>();
    p.N = N;
    p.D = static_cast<int>(D);
    p.eps = static_cast<float>(eps);
    p.rms = rms;
    norm::norm_forward(p, dtype_of(x), c10::cuda::getCurrentCUDAStream().stream());
    ctx->save_for_backward({sum, weight, rms ? rstd : mean, rstd});
    ctx->saved_data["add"] = add;
    ctx->saved_data["rms"] = rms;
    if (add) return {y, sum};
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const Tensor& weight = saved[1];
    const bool add = ctx->saved_data["add"].toBool(), rms = ctx->saved_data["rms"].toBool();
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t D = x.size(-1), N = x.numel() / D;
    const Tensor dy = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(x);
    Tensor dsum;
    if (add && grads.size() > 1 && grads[1].defined()) dsum = grads[1].contiguous();
    auto dx = torch::empty_like(x);
    auto dweight = torch::empty_like(weight);
    Tensor dbias = rms ? Tensor() : torch::empty_like(weight);
    const int blocks = norm::backward_blocks(N, static_cast<int>(D), dtype_of(x));
    auto partial = torch::empty({blocks, 2, D}, x.options().dtype(torch::kFloat32));
    norm::NormBwdParams p;
    p.dy = dy.data_ptr();
    p.dsum = dsum.defined() ? dsum.data_ptr() : nullptr;
    p.x = x.data_ptr();
    p.weight = weight.data_ptr<float>();
    p.mean = rms ? nullptr : saved[2].data_ptr<float>();
    p.rstd = saved[3].data_ptr<float>();
    p.dx = dx.data_ptr();
    p.partial = partial.data_ptr<float>();
    p.dweight = dweight.data_ptr<float>();
    p.dbias = rms ? nullptr : dbias.data_ptr<float>();
    p.N = N;
    p.D = static_cast<int>(D);
    p.rms = rms;
    TORCH_CHECK(aligned16(dy) && (!dsum.defined() || aligned16(dsum)), "add_norm backward: gradients not 16-byte aligned");
    norm::norm_backward(p, dtype_of(x), blocks, c10::cuda::getCurrentCUDAStream().stream());
    return {dx, add ? dx : Tensor(), dweight, dbias, Tensor()};
  }
};

}  // namespace

std::string add_norm_kernel_unsupported(const torch::Tensor& x, const torch::Tensor& branch,
                                        const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!x.is_cuda()) return "not on a CUDA device";
  if (x.scalar_type() != torch::kBFloat16 && x.scalar_type() != torch::kHalf) return "not bf16 or fp16";
  if (x.dim() < 1) return "a scalar";
  const int64_t D = x.size(-1);
  if (D < 8 || D % 8 != 0 || D > norm::kMaxD) {
    return "last dim " + std::to_string(D) + " is not a multiple of 8 in [8, " + std::to_string(norm::kMaxD) + "]";
  }
  if (!x.is_contiguous() || !aligned16(x)) return "x not contiguous and 16-byte aligned";
  if (branch.defined()) {
    if (branch.sizes() != x.sizes() || branch.scalar_type() != x.scalar_type() || branch.device() != x.device()) {
      return "branch differs from x in shape, dtype or device";
    }
    if (!branch.is_contiguous() || !aligned16(branch)) return "branch not contiguous and 16-byte aligned";
  }
  for (const Tensor* t : {&weight, &bias}) {
    if (!t->defined()) continue;
    if (t->scalar_type() != torch::kFloat32 || t->dim() != 1 || t->size(0) != D || t->device() != x.device() ||
        !t->is_contiguous() || !aligned16(*t)) {
      return "weight/bias not fp32 [" + std::to_string(D) + "] on x's device";
    }
  }
  if (!weight.defined()) return "no weight";
  return "";
}

std::pair<torch::Tensor, torch::Tensor> add_norm_cuda(const torch::Tensor& x, const torch::Tensor& branch,
                                                      const torch::Tensor& weight, const torch::Tensor& bias,
                                                      double eps) {
  const std::string why = add_norm_kernel_unsupported(x, branch, weight, bias);
  TORCH_CHECK(why.empty(), "add_norm_cuda: x ", x.sizes(), " (", x.scalar_type(), "): ", why);
  const auto empty = torch::empty({0}, weight.options());
  auto out = AddNormFunction::apply(x, branch.defined() ? branch : empty, weight, bias.defined() ? bias : empty, eps);
  if (branch.defined()) return {out[0], out[1]};
  return {out[0], torch::Tensor()};
}

#endif

}  // namespace longtrain::kernels
