// See op.h. Checks at the boundary, plain params for xent.cu, the launch on
// the current CUDA stream.
#include "kernels/xent/op.h"

#include "kernels/xent/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {

#ifndef LONGTRAIN_WITH_CUDA

std::string softmax_xent_kernel_unsupported(const torch::Tensor&) { return "this build has no CUDA kernels"; }

std::pair<torch::Tensor, torch::Tensor> softmax_xent_cuda(const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "softmax_xent_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

std::string softmax_xent_kernel_unsupported(const torch::Tensor& logits) {
  if (!logits.is_cuda()) return "not on a CUDA device";
  if (logits.scalar_type() != torch::kBFloat16 && logits.scalar_type() != torch::kFloat16) return "not bf16 or fp16";
  if (logits.dim() != 2 || logits.size(1) < 1 || logits.size(1) > (1 << 30)) return "not [C, V]";
  if (!logits.is_contiguous()) return "not contiguous";
  return "";
}

std::pair<torch::Tensor, torch::Tensor> softmax_xent_cuda(const torch::Tensor& logits, const torch::Tensor& targets) {
  const std::string why = softmax_xent_kernel_unsupported(logits);
  TORCH_CHECK(why.empty(), "softmax_xent_cuda: logits ", logits.sizes(), " (", logits.scalar_type(), "): ", why);
  TORCH_CHECK(targets.scalar_type() == torch::kInt64 && targets.dim() == 1 && targets.size(0) == logits.size(0) &&
                  targets.device() == logits.device(),
              "softmax_xent_cuda: targets must be int64 [", logits.size(0), "] on ", logits.device(), ", got ",
              targets.scalar_type(), " ", targets.sizes(), " on ", targets.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto t = targets.contiguous();
  auto loss = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat32));
  auto dlogits = torch::empty_like(logits);
  xent::XentParams p;
  p.logits = logits.data_ptr();
  p.targets = t.data_ptr<int64_t>();
  p.loss = loss.data_ptr<float>();
  p.dlogits = dlogits.data_ptr();
  p.C = logits.size(0);
  p.V = static_cast<int>(logits.size(1));
  xent::softmax_xent(p, logits.scalar_type() == torch::kBFloat16 ? xent::DType::kBFloat16 : xent::DType::kFloat16,
                     c10::cuda::getCurrentCUDAStream().stream());
  return {loss, dlogits};
}

#endif

}  // namespace longtrain::kernels
