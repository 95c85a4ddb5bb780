// Chunked causal linear attention on CUDA: the LibTorch entry points.
//
//   o = linear_attention_cuda(φq, φk, v, decay, normalize, eps)
//   φq, φk, v: [B, H, L, D] bf16 on one CUDA device, D 64 or 128, the head dim
//              contiguous (any other strides that keep rows 16-byte aligned);
//              φq, φk are already feature-mapped (model/linear_attention.h).
//   decay:     [H] γ in (0, 1] (fp32), or undefined for γ = 1.
//   o:         [B, H, L, D] bf16, stored [B, L, H, D] (o.transpose(1, 2) is
//              contiguous, the layout the mixer's output projection reads).
//   Causal; differentiable in φq, φk and v. The decay is a constant here: a
//   decay that requires grad is refused (see op.cpp for why). The math is
//   linear_attention_chunked's (model/linear_attention.h); the kernels are in
//   chunk.cu (params.h describes the passes).
//
//   o = linear_attention_step_cuda(φq, φk, v, S, z, decay, normalize, eps)
//   One token, [B, H, 1, D] each: S [B, H, D, D] and z [B, H, D] (fp32,
//   contiguous) advance in place. No autograd (generation).
#pragma once

#include <torch/torch.h>

#include <string>

namespace longtrain::kernels {

// Whether this build has the CUDA kernels.
bool linear_attention_cuda_built();

// Why the kernel cannot run on values v [B, H, L, Dv] with feature dim F
// ("" when it can): device, dtype (bf16), dims (F = Dv, 64 or 128).
std::string linear_attention_kernel_unsupported(const torch::Tensor& v, int64_t feature_dim);

torch::Tensor linear_attention_cuda(const torch::Tensor& phi_q, const torch::Tensor& phi_k, const torch::Tensor& v,
                                    const torch::Tensor& decay, bool normalize, double eps);

torch::Tensor linear_attention_step_cuda(const torch::Tensor& phi_q, const torch::Tensor& phi_k,
                                         const torch::Tensor& v, torch::Tensor& S, torch::Tensor& z,
                                         const torch::Tensor& decay, bool normalize, double eps);

}  // namespace longtrain::kernels
